"""Bundles: list, detail (the manifest a reviewer reads), download, and upload = `edge-fleet publish`.

An upload is the raw file as the request body (`curl --data-binary @x.edgebundle`), streamed to
a temporary file in the store with a size limit (413 past it), then handed to the very function
`edge-fleet publish` uses: a tampered bundle is refused with the CLI's own message and code.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from edge_agent.bundle import NAME_RE

from .. import actions
from ..access import Actor
from ..errors import NotFound
from ..publish import store_space
from ..registry import BundleRecord, Registry
from ..views import bundle_detail, bundle_view
from .deps import ApiState, Paging, actor, page, paging, registry, state
from .errors import ApiError

router = APIRouter(prefix="/api/v1", tags=["bundles"])


def _bundle(reg: Registry, sha256: str) -> BundleRecord:
    rec = reg.bundle_by_sha(sha256) if re.fullmatch(r"[0-9a-f]{64}", sha256) else None
    if rec is None:
        raise NotFound(f"no bundle with sha256 {sha256!r}")
    return rec


@router.get("/bundles", summary="Published bundles, newest version first")
def list_bundles(_who: Actor = Depends(actor), reg: Registry = Depends(registry), p: Paging = Depends(paging),
                 name: str | None = Query(None, max_length=128)) -> dict[str, Any]:
    got = reg.bundles_page(p.limit, p.offset, name=name)
    return page([bundle_view(b) for b in got.items], got.total, p)


@router.get("/bundles/{sha256}", summary="A bundle's manifest: precision, accuracy evidence, size, latency, signer")
def get_bundle(sha256: str, _who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    return bundle_detail(_bundle(reg, sha256))


@router.get("/bundles/{sha256}/download", summary="The bundle file", response_class=FileResponse)
def download_bundle(sha256: str, _who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> FileResponse:
    rec = _bundle(reg, sha256)
    if not rec.path.is_file():
        raise NotFound(f"bundle {sha256[:12]} is registered but its file is missing from the store")
    return FileResponse(rec.path, media_type="application/octet-stream",
                        filename=f"{rec.name}-v{rec.version}-{rec.profile}.edgebundle")


@router.post("/bundles", status_code=201, summary="Upload and publish a bundle (admin)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_bundle(request: Request, who: Actor = Depends(actor), st: ApiState = Depends(state),
                        filename: str = Query("upload.edgebundle", max_length=128,
                                              description="the file's name, used in error messages")) -> dict[str, Any]:
    actions.require(st.registry, who, "admin", "publish", filename)  # before reading a byte of the body
    name = Path(filename).name
    if not NAME_RE.match(name):  # the bundle format's name rule: a file name safe in the store
        raise ApiError(422, "invalid-request", f"filename must be 1-128 of [A-Za-z0-9._-], got {filename!r}", 2)
    form = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # `curl -F file=@x.edgebundle`: the form's envelope was refused as a corrupt bundle ("re-download it"); plain
    # `curl --data-binary @x` says application/x-www-form-urlencoded but sends the file as it is, so that one passes
    if form == "multipart/form-data":
        raise ApiError(415, "unsupported-media-type", f"the bundle was sent as a form ({form}): send the file itself "
                       "as the request body (curl --data-binary @FILE, Content-Type application/octet-stream)", 2)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > st.max_upload:
        raise _too_large(st.max_upload)
    st.registry.store_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=st.registry.store_dir, prefix=".upload-"))
    try:
        path = folder / name
        with store_space(st.registry.store_dir, name):
            await _receive(request, path, st.max_upload)
        rec = await run_in_threadpool(actions.publish, st.registry, who, path, st.trust(), name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return bundle_detail(rec)


async def _receive(request: Request, path: Path, limit: int) -> None:
    """Stream the body to `path`, refusing (413) as soon as it passes `limit` bytes."""
    size = 0
    with open(path, "wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            fh.write(chunk)
    if size == 0:
        raise ApiError(422, "invalid-request", "empty body: send the bundle file as the request body", 2)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too-large", f"upload larger than the server's limit of {limit} bytes (serve --max-upload)")
