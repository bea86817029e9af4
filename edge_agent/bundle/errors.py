"""Typed bundle errors. Each carries a one-line message a user can act on and an exit code."""

from __future__ import annotations


class BundleError(Exception):
    """Base class: the bundle cannot be used. `exit_code` is what the CLIs exit with."""

    exit_code = 10
    kind = "bundle"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CorruptBundle(BundleError):
    """Truncated, not a bundle archive, or an archive that cannot be read."""

    exit_code = 11
    kind = "corrupt"


class UnsafeMember(BundleError):
    """Path traversal, absolute path, link, device file, duplicate or oversized member."""

    exit_code = 12
    kind = "unsafe-member"


class SignatureError(BundleError):
    """Missing, malformed or invalid signature, or a key that is not trusted."""

    exit_code = 13
    kind = "signature"


class HashMismatch(BundleError):
    """A file's size or SHA-256 differs from the manifest, or a file is missing/unlisted."""

    exit_code = 14
    kind = "hash-mismatch"


class ManifestError(BundleError):
    """manifest.json is missing a field, has a wrong field, or is not JSON."""

    exit_code = 15
    kind = "manifest"


class UnsupportedSchema(BundleError):
    """The manifest's schema major version is newer than this agent understands."""

    exit_code = 16
    kind = "schema"


class ProfileMismatch(BundleError):
    """The bundle was built for another device profile."""

    exit_code = 17
    kind = "profile-mismatch"


class InsufficientSpace(BundleError):
    """Not enough free disk space to unpack the bundle."""

    exit_code = 18
    kind = "disk-space"
