"""Bundle download over HTTP(S): `Range: bytes=N-` continues a partial `<staging>/<sha>.http.part`.

The other transport of the Transport interface (transfer.py holds MQTT blocks and the staging folder):
the verifying phase checks what either one staged.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .transfer import TransferCancelled, TransferError

log = logging.getLogger(__name__)


CHUNK = 1 << 20  # bytes per read and write, into one reused buffer (64 KiB reads cost 2x the CPU at loopback speed)
PROGRESS_EVERY_S = 1.0  # as the block download: each progress call publishes the device's reported state


def _copy_body(resp, fh, have: int, size: int, url: str, cancel: threading.Event,  # noqa: ANN001 - file objects
               progress: Callable[[float], None] | None) -> int:
    """Append the response body to `fh`; returns the bytes the file holds. Progress at most once a second:
    it used to be called for every 64 KiB, i.e. 500 retained reported-state messages for a 32 MB bundle."""
    view = memoryview(bytearray(CHUNK))
    last_report = time.monotonic()
    # readinto1: what has arrived (one socket read), not a full MiB: on a slow link readinto() waited for a whole
    # MiB before writing a byte, so no progress, no cancel, and a crash or power cut lost all of it
    while n := resp.readinto1(view):
        if cancel.is_set():
            raise TransferCancelled("download abandoned")
        if have + n > size:
            raise TransferError(f"{url} sent more than the expected {size} bytes")
        written = 0
        while written < n:  # an unbuffered file may take part of a chunk per call
            written += fh.write(view[written:n])
        have += n
        if progress and (now := time.monotonic()) - last_report >= PROGRESS_EVERY_S:
            progress(have / size)
            last_report = now
    return have


def http_download(
    url: str,
    staging_dir: Path,
    sha256: str,
    size: int,
    cancel: threading.Event | None = None,
    progress: Callable[[float], None] | None = None,
    attempts: int = 5,
    timeout_s: float = 30.0,
    cafile: str | None = None,
) -> Path:
    """Download `url` into `<staging>/<sha>.http.part`, continuing a partial file with Range."""
    import ssl

    part = Path(staging_dir) / f"{sha256}.http.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https://") else None
    cancel = cancel or threading.Event()
    last_exc: Exception | None = None
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return part
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s,
                                        context=context) as resp:
                if have and resp.status != 206:
                    log.info("server ignored the Range request: starting over")
                    have = 0
                with open(part, "r+b" if part.exists() else "wb", buffering=0) as fh:  # on disk as it arrives
                    fh.seek(have)
                    fh.truncate()
                    have = _copy_body(resp, fh, have, size, url, cancel, progress)
            if have == size:
                if progress:
                    progress(1.0)
                return part
            last_exc = TransferError(f"{url} ended after {have} of {size} bytes")
        except TransferError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last_exc = exc
        log.info("HTTP download attempt %d failed (%s); resuming", attempt + 1, last_exc)
        if cancel.wait(min(2.0**attempt * 0.2, 5.0)):
            raise TransferCancelled("download abandoned")
    raise TransferError(f"HTTP download of {url} failed: {last_exc}")


__all__ = ["http_download"]
