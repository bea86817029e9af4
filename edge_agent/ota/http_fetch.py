"""Bundle download over HTTP(S): `Range: bytes=N-` continues a partial `<staging>/<sha>.http.part`.

The other transport of the Transport interface (transfer.py holds MQTT blocks and the staging folder):
the verifying phase checks what either one staged.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .transfer import TransferCancelled, TransferError

log = logging.getLogger(__name__)


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
                with open(part, "r+b" if part.exists() else "wb") as fh:
                    fh.seek(have)
                    fh.truncate()
                    while chunk := resp.read(1 << 16):
                        if cancel.is_set():
                            raise TransferCancelled("download abandoned")
                        fh.write(chunk)
                        have += len(chunk)
                        if have > size:
                            raise TransferError(f"{url} sent more than the expected {size} bytes")
                        if progress:
                            progress(have / size)
            if have == size:
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
