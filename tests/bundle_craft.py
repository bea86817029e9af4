"""Hand-made bundle archives for negative tests: any members, any manifest, any signature document.

`write_bundle` refuses to make a bad bundle, so the fault and fuzz tests build the tar themselves
(the same ustar headers write_bundle uses) and sign the manifest with the real key.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import Manifest
from edge_agent.bundle.manifest import FileEntry
from edge_agent.bundle.signing import sign_manifest


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def craft_bundle(out: Path, template: Manifest, key: Ed25519PrivateKey, members: dict[str, bytes], *,
                 listed: dict[str, bytes] | None = None,
                 signature_edit: Callable[[dict[str, Any]], None] | None = None,
                 sparse: dict[str, int] | None = None, manifest_edit: Callable[[Manifest], None] | None = None,
                 raw: list[tuple[tarfile.TarInfo, bytes]] | None = None, signed: bool = True) -> Path:
    """A bundle whose manifest (from `template`) lists `listed` (default: `members`) and whose archive holds
    `members`; `signature_edit` changes signature.json after signing; `sparse` gives members whose header
    says that many bytes of zeros, written as a hole (the file stays small on disk); `raw` appends members
    as given (links, devices, duplicates); `signed=False` leaves signature.json out."""
    listed = members if listed is None else listed
    manifest = Manifest.from_dict(template.to_dict())
    manifest.model_file, manifest.selftest = next(iter(listed), "model.onnx"), None
    manifest.files = [FileEntry(path=n, size=len(b), sha256=hashlib.sha256(b).hexdigest()) for n, b in listed.items()]
    if manifest_edit is not None:
        manifest_edit(manifest)
    manifest_bytes = manifest.to_json()
    sig_doc = json.loads(sign_manifest(manifest_bytes, key))
    if signature_edit is not None:
        signature_edit(sig_doc)
    signature = json.dumps(sig_doc).encode()
    with open(out, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(_info("manifest.json", len(manifest_bytes)), io.BytesIO(manifest_bytes))
            if signed:
                tar.addfile(_info("signature.json", len(signature)), io.BytesIO(signature))
            for name, data in members.items():
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
            for info, data in raw or []:
                tar.addfile(info, io.BytesIO(data) if data else None)
            for name, size in (sparse or {}).items():
                fh.write(_info(name, size).tobuf(format=tarfile.USTAR_FORMAT))
                fh.seek(-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, io.SEEK_CUR)  # a hole of zeros
                tar.offset = fh.tell()
    return out
