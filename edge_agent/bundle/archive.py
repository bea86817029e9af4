"""The .edgebundle archive: deterministic writing, and reading that verifies as it goes.

Layout (uncompressed POSIX ustar, members in this order):
    manifest.json      canonical JSON (see manifest.py)
    signature.json     detached Ed25519 signature over the exact manifest.json bytes
    <payload files>    sorted by path, each listed in manifest.files with size and SHA-256

Every member header is fixed (mtime 0, uid/gid 0, no user names, mode 0644), so the same
inputs always give a byte-identical file. Reading never calls tarfile's extract: each member
is checked (regular file, safe relative path, size limit, no duplicates) and copied by us
into a private staging folder, hashing as it streams, then renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .diskspace import check_free_space
from .errors import BundleError, CorruptBundle, HashMismatch, InsufficientSpace, ProfileMismatch, UnsafeMember
from .manifest import FileEntry, Manifest, check_schema_version
from .signing import TrustStore, key_id, sign_manifest, verify_manifest_signature

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
BUNDLE_SUFFIX = ".edgebundle"
MAX_MANIFEST_BYTES = 1 << 20
DEFAULT_MAX_MEMBER_BYTES = 2 << 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerifiedBundle:
    """What a successful verification proved: the manifest, who signed it, where it was unpacked."""

    manifest: Manifest
    key_id: str
    path: Path
    unpacked_to: Path | None = None
    manifest_bytes: bytes = b""  # the exact signed bytes (a slot keeps them: edge_agent.bundle.unpacked)
    signature_bytes: bytes = b""


# --- writing -----------------------------------------------------------------------------


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, hex SHA-256) of a file, streamed."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _check_member_name(name: str) -> str:
    p = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
        or len(name) > 99
        or p.is_absolute()
    ):
        raise UnsafeMember(f"bundle member {name!r} has an unsafe or invalid path (must be relative, no '..', < 100 chars)")
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        raise UnsafeMember(f"bundle member {name!r} would overwrite a reserved name")
    return name


def check_no_path_clash(paths: Iterable[str]) -> None:
    """Refuse a payload where one path is a file and a folder at once (`model` and `model/x.onnx`):
    it cannot be unpacked, so it must never pass verification."""
    names = set(paths)
    for name in sorted(names):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in names:
                raise UnsafeMember(f"bundle member {parent!r} is a file and also the folder of {name!r}")


def _header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_bundle(out_path: Path, manifest: Manifest, files: dict[str, Path], key: Ed25519PrivateKey) -> Path:
    """Hash `files` (archive path -> local file) into the manifest, sign it and write the bundle.

    The manifest's `files` list is replaced by what is actually packed. The write is atomic:
    a temporary file beside `out_path` is renamed over it only when complete.
    """
    entries = []
    for name in sorted(files):
        size, digest = sha256_file(files[name])
        entries.append(FileEntry(path=_check_member_name(name), size=size, sha256=digest))
    check_no_path_clash(e.path for e in entries)
    manifest.files = entries
    manifest = Manifest.from_dict(manifest.to_dict())  # validate exactly what the agent will read
    manifest_bytes = manifest.to_json()
    signature = sign_manifest(manifest_bytes, key)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".partial", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            write_archive(raw, manifest_bytes, signature, entries, files)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def write_archive(raw: BinaryIO, manifest_bytes: bytes, signature: bytes, entries: list[FileEntry],
                  files: dict[str, Path]) -> None:
    """The archive bytes (deterministic: same inputs, same bytes), written to `raw`."""
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_header(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tar.addfile(_header(SIGNATURE_NAME, len(signature)), io.BytesIO(signature))
        for entry in entries:
            with open(files[entry.path], "rb") as fh:
                tar.addfile(_header(entry.path, entry.size), fh)


# --- reading -----------------------------------------------------------------------------


def _check_member(info: tarfile.TarInfo, max_member_bytes: int) -> None:
    if not info.isreg():
        kind = "symlink" if info.issym() else "hard link" if info.islnk() else "device/fifo/directory entry"
        raise UnsafeMember(f"bundle member {info.name!r} is a {kind}; only regular files are allowed")
    if info.name not in (MANIFEST_NAME, SIGNATURE_NAME):
        _check_member_name(info.name)
    if info.size > max_member_bytes:
        raise UnsafeMember(
            f"bundle member {info.name!r} is {info.size} bytes, over the limit of {max_member_bytes} bytes"
        )


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise UnsafeMember(f"bundle member {info.name!r} is {info.size} bytes, over the limit of {limit} bytes")
    try:
        fh = tar.extractfile(info)
        data = fh.read() if fh else b""
    except tarfile.TarError as exc:
        raise CorruptBundle(f"bundle is truncated inside {info.name!r}: re-download or re-copy it") from exc
    if len(data) != info.size:
        raise CorruptBundle(f"bundle is truncated inside {info.name!r}: re-download or re-copy it")
    return data


def _copy_hashing(src: BinaryIO, dst: BinaryIO | None, entry: FileEntry) -> None:
    h = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
    if size != entry.size:
        if size < entry.size:
            raise CorruptBundle(f"bundle is truncated inside {entry.path!r}: re-download or re-copy it")
        raise HashMismatch(f"{entry.path}: size {size} differs from the manifest's {entry.size}")
    if h.hexdigest() != entry.sha256:
        raise HashMismatch(f"{entry.path}: SHA-256 differs from the signed manifest: the file was altered or damaged")


def _members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    try:
        while True:
            info = tar.next()
            if info is None:
                return
            yield info
    except tarfile.TarError as exc:
        raise CorruptBundle(f"bundle archive is corrupt or truncated ({exc}): re-download or re-copy it") from exc


def verify_bundle(
    path: Path,
    trust: TrustStore,
    profile: str | None = None,
    allow_profile_mismatch: bool = False,
    unpack_to: Path | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    read_members: bool = True,
) -> VerifiedBundle:
    """Verify a bundle end to end; optionally unpack it into `unpack_to` (created, must not exist).

    Checks, in order: readable archive, manifest and signature first, signature against the
    trusted keys, schema version, manifest fields, target profile, then every member (type,
    path, size) and its size and SHA-256 against the manifest, and that every listed file is
    present. Raises a BundleError subclass with a one-line message on the first failure; on
    failure nothing is left at `unpack_to`. read_members=False stops after the profile: the signed
    manifest without reading the payload (the agent's verifying phase, whose install pass hashes
    every member anyway: one SHA-256 pass per device update, docs/fleet.md).
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptBundle(f"{path} does not exist or is not a file")
    staging: Path | None = None
    if unpack_to is not None and not read_members:
        raise ValueError("unpacking reads every member: read_members=False cannot unpack")
    if unpack_to is not None:
        unpack_to = Path(unpack_to)
        if unpack_to.exists():
            raise BundleError(f"unpack target {unpack_to} already exists")
        unpack_to.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=unpack_to.parent))
    try:
        manifest, kid, signed = _verify_stream(path, trust, profile, allow_profile_mismatch, staging, max_member_bytes,
                                               read_members)
        if staging is not None and unpack_to is not None:
            os.replace(staging, unpack_to)
            staging = None
        return VerifiedBundle(manifest=manifest, key_id=kid, path=path, unpacked_to=unpack_to,
                              manifest_bytes=signed[0], signature_bytes=signed[1])
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _verify_stream(
    path: Path,
    trust: TrustStore,
    profile: str | None,
    allow_profile_mismatch: bool,
    staging: Path | None,
    max_member_bytes: int,
    read_members: bool = True,
) -> tuple[Manifest, str, tuple[bytes, bytes]]:
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise CorruptBundle(f"{path.name} is not a readable bundle archive ({exc}): re-download or re-copy it") from exc
    with tar:
        members = _members(tar)
        first = next(members, None)
        if first is None or first.name != MANIFEST_NAME:
            raise CorruptBundle(f"{path.name} is not an edgekit bundle: manifest.json must be its first member")
        _check_member(first, max_member_bytes)
        manifest_bytes = _read_small(tar, first, MAX_MANIFEST_BYTES)
        second = next(members, None)
        signature = None
        pending: list[tarfile.TarInfo] = []
        if second is not None and second.name == SIGNATURE_NAME:
            _check_member(second, max_member_bytes)
            signature = _read_small(tar, second, 64 << 10)
        elif second is not None:
            pending.append(second)
        kid = verify_manifest_signature(manifest_bytes, signature, trust)
        manifest = Manifest.from_json(manifest_bytes)  # schema check happens inside
        if profile is not None and manifest.profile != profile and not allow_profile_mismatch:
            raise ProfileMismatch(
                f"bundle was built for profile '{manifest.profile}' but this device is '{profile}': "
                "convert for this profile, or override with --allow-profile-mismatch (verify, run, bench, serve-model; "
                "install and updates have no override)"
            )
        if not read_members:
            return manifest, kid, (manifest_bytes, signature or b"")
        if staging is not None:
            check_free_space(staging, manifest.total_size, "unpack the bundle")
        expected = {f.path: f for f in manifest.files}
        check_no_path_clash(expected)
        seen: set[str] = set()
        for info in [*pending, *members]:
            _check_member(info, max_member_bytes)
            if info.name in seen or info.name in (MANIFEST_NAME, SIGNATURE_NAME):
                raise UnsafeMember(f"bundle member {info.name!r} appears twice")
            entry = expected.get(info.name)
            if entry is None:
                raise HashMismatch(f"bundle member {info.name!r} is not listed in the signed manifest")
            if info.size != entry.size:  # before reading a byte of it (a sparse 2 GiB member costs nothing)
                raise HashMismatch(f"{info.name}: the archive header says {info.size} bytes, the signed manifest "
                                   f"{entry.size}: the file was altered or damaged")
            seen.add(info.name)
            src = tar.extractfile(info)
            if src is None:
                raise CorruptBundle(f"bundle member {info.name!r} cannot be read")
            try:
                if staging is None:
                    _copy_hashing(src, None, entry)
                else:
                    target = _safe_target(staging, info.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "xb") as dst:
                        _copy_hashing(src, dst, entry)
            except tarfile.TarError as exc:
                raise CorruptBundle(f"bundle is truncated or corrupt inside {info.name!r}: re-download it") from exc
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise InsufficientSpace(f"disk full while unpacking {info.name!r}: free space and retry") from exc
                raise
        missing = sorted(set(expected) - seen)
        if missing:
            raise CorruptBundle(f"bundle is missing {', '.join(missing)} listed in its manifest (truncated?)")
        last = max(tar.getmembers(), key=lambda m: m.offset_data)
        data_end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        size = path.stat().st_size
        if size < data_end + 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
            raise CorruptBundle(f"{path.name} has no end-of-archive marker: the file is truncated, re-download it")
    return manifest, kid, (manifest_bytes, signature or b"")


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UnsafeMember(f"bundle member {name!r} would be written outside the target folder")
    return target


def read_manifest_unverified(path: Path) -> Manifest:
    """The manifest of a bundle WITHOUT checking its signature (for display and early refusals only)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME:
                raise CorruptBundle(f"{Path(path).name} is not an edgekit bundle: manifest.json must be its first member")
            return Manifest.from_json(_read_small(tar, first, MAX_MANIFEST_BYTES))
    except (tarfile.TarError, OSError) as exc:
        raise CorruptBundle(f"{Path(path).name} is not a readable bundle archive ({exc}): re-download or re-copy it") from exc


def read_signature_doc(path: Path) -> dict:
    """The parsed signature.json (2nd member) of a bundle, unverified; CorruptBundle/SignatureError if absent."""
    from .errors import SignatureError

    try:
        with tarfile.open(path, mode="r:") as tar:
            tar.next()
            second = tar.next()
            if second is None or second.name != SIGNATURE_NAME:
                raise SignatureError(f"{Path(path).name} is not signed (no signature.json)")
            doc = json.loads(_read_small(tar, second, 64 << 10))
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise CorruptBundle(f"{Path(path).name}: cannot read signature.json ({exc})") from exc
    if not isinstance(doc, dict):
        raise CorruptBundle(f"{Path(path).name}: signature.json is not a JSON object")
    return doc


__all__ = [
    "BUNDLE_SUFFIX",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "VerifiedBundle",
    "check_no_path_clash",
    "check_schema_version",
    "key_id",
    "read_manifest_unverified",
    "read_signature_doc",
    "sha256_file",
    "verify_bundle",
    "write_bundle",
]
