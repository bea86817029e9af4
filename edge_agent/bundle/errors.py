"""Typed bundle errors. Each carries a one-line message a user can act on and an exit code."""

from __future__ import annotations

from ..errors import EdgekitError


class BundleError(EdgekitError):
    """Base class: the bundle cannot be used. Codes and kinds come from edge_agent.errors.EXIT_CODES."""

    code_name = "bundle"


class CorruptBundle(BundleError):
    """Truncated, not a bundle archive, or an archive that cannot be read."""

    code_name = "corrupt"


class UnsafeMember(BundleError):
    """Path traversal, absolute path, link, device file, duplicate or oversized member."""

    code_name = "unsafe-member"


class SignatureError(BundleError):
    """Missing, malformed or invalid signature, or a key that is not trusted."""

    code_name = "signature"


class HashMismatch(BundleError):
    """A file's size or SHA-256 differs from the manifest, or a file is missing/unlisted."""

    code_name = "hash-mismatch"


class ManifestError(BundleError):
    """manifest.json is missing a field, has a wrong field, or is not JSON."""

    code_name = "manifest"


class UnsupportedSchema(BundleError):
    """The manifest's schema major version is newer than this agent understands."""

    code_name = "schema"


class ProfileMismatch(BundleError):
    """The bundle was built for another device profile."""

    code_name = "profile-mismatch"


class InsufficientSpace(BundleError):
    """Not enough free disk space to unpack the bundle."""

    code_name = "disk-space"
