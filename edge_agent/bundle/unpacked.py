"""An unpacked bundle checked again from what its signer signed.

An A/B slot keeps the bundle's exact manifest.json and signature.json bytes beside the unpacked
payload (`keep_signed`). When the slot's own bookkeeping (slot.json) is lost or damaged, the slot is
rebuilt from those (`verify_unpacked`): the signature is checked against the trusted keys, every
listed file is re-hashed, and the archive's SHA-256 (the bundle's identity in the OTA protocol) is
recomputed by writing the same deterministic archive into a hash instead of a file. Nothing is guessed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .archive import MANIFEST_NAME, SIGNATURE_NAME, VerifiedBundle, sha256_file, write_archive
from .errors import CorruptBundle, HashMismatch
from .manifest import Manifest
from .signing import TrustStore, verify_manifest_signature


@dataclass(frozen=True)
class CheckedUnpacked:
    """What `verify_unpacked` proved about a folder: its signed manifest, the signer, the archive's SHA-256."""

    manifest: Manifest
    key_id: str
    sha256: str


def keep_signed(vb: VerifiedBundle, folder: Path) -> None:
    """Store the bundle's signed manifest and signature, byte for byte and durably, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((MANIFEST_NAME, vb.manifest_bytes), (SIGNATURE_NAME, vb.signature_bytes)):
        with open(folder / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


class _HashSink:
    """A write-only file that hashes what tarfile writes into it."""

    def __init__(self) -> None:
        self.hash, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def verify_unpacked(signed: Path, payload: Path, trust: TrustStore) -> CheckedUnpacked:
    """Check `payload` against the manifest and signature kept in `signed`; BundleError if anything differs."""
    try:
        manifest_bytes = (signed / MANIFEST_NAME).read_bytes()
        signature = (signed / SIGNATURE_NAME).read_bytes()
    except OSError as exc:
        raise CorruptBundle(f"no signed manifest kept in {signed} ({exc.strerror})") from exc
    kid = verify_manifest_signature(manifest_bytes, signature, trust)
    manifest = Manifest.from_json(manifest_bytes)
    files = {entry.path: payload / entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = files[entry.path]
        try:
            if path.is_symlink() or not path.is_file() or sha256_file(path) != (entry.size, entry.sha256):
                raise HashMismatch(f"{path} differs from its signed manifest")
        except OSError as exc:
            raise HashMismatch(f"{path} cannot be read ({exc.strerror})") from exc
    sink = _HashSink()
    write_archive(sink, manifest_bytes, signature, manifest.files, files)  # type: ignore[arg-type]
    return CheckedUnpacked(manifest, kid, sink.hash.hexdigest())
