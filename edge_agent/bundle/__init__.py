"""THE bundle format: manifest schema, archive read/write, signing and typed errors.

The converter writes bundles with `write_bundle`, the agent and the fleet read them with
`verify_bundle`. Nothing else in the project re-implements any of this.
"""

from .archive import (
    BUNDLE_SUFFIX,
    VerifiedBundle,
    read_manifest_unverified,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from .diskspace import DISK_MARGIN_BYTES, check_free_space
from .errors import (
    BundleError,
    CorruptBundle,
    HashMismatch,
    InsufficientSpace,
    ManifestError,
    ProfileMismatch,
    SignatureError,
    UnsafeMember,
    UnsupportedSchema,
)
from .manifest import (
    NAME_RE,
    REFERENCE_STATS_FILE,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    Postprocess,
    Preprocess,
    Quantization,
    SelfTest,
    TensorSpec,
)
from .signing import TrustStore, generate_keypair, key_id, load_private_key, load_public_key

__all__ = [
    "BUNDLE_SUFFIX",
    "REFERENCE_STATS_FILE",
    "SCHEMA_VERSION",
    "DISK_MARGIN_BYTES",
    "NAME_RE",
    "BundleError",
    "CorruptBundle",
    "FileEntry",
    "HashMismatch",
    "InsufficientSpace",
    "Manifest",
    "ManifestError",
    "Postprocess",
    "Preprocess",
    "ProfileMismatch",
    "Quantization",
    "SelfTest",
    "SignatureError",
    "TensorSpec",
    "TrustStore",
    "UnsafeMember",
    "UnsupportedSchema",
    "VerifiedBundle",
    "check_free_space",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_manifest_unverified",
    "sha256_file",
    "verify_bundle",
    "write_bundle",
]
