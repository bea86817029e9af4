"""The agent's HTTP download (edge_agent/ota/http_fetch.py) against a real HTTP server on loopback: the
file arrives whole and progress (which publishes the device's retained reported state) is reported at
most once a second, not once per read."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from edge_agent.ota.http_fetch import PROGRESS_EVERY_S, http_download


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_progress_is_reported_once_a_second_not_per_read(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    data = os.urandom(24 << 20)
    (served / "b.edgebundle").write_bytes(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    calls: list[float] = []
    try:
        t0 = time.monotonic()
        path = http_download(f"http://127.0.0.1:{server.server_port}/b.edgebundle", tmp_path / "staging",
                             hashlib.sha256(data).hexdigest(), len(data), progress=calls.append)
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == data
    assert calls[-1] == 1.0 and calls == sorted(calls)
    # one call per read (64 KiB) was 384 calls for this file
    assert len(calls) <= 2 + elapsed / PROGRESS_EVERY_S, (len(calls), elapsed)
