"""The agent's HTTP(S) bundle download (`--source-url` rollouts) on a slow link, against a real HTTP server.

It read the body a MiB at a time (readinto() fills the whole buffer): on a link slower than that, nothing
reached the `.part` file, no progress was reported and a superseding deployment was not noticed until a
whole MiB had arrived, and a killed or power-cut agent lost it all (a real agent killed with -9 after
20 KB of a 50 KB bundle at 5 KB/s had an empty part file). What has arrived is on disk as it arrives.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from edge_agent.ota.http_fetch import http_download
from .ota_helpers import wait_for

DATA = os.urandom(300_000)
HALF = len(DATA) // 2


@pytest.fixture
def trickle():
    """A server that sends the first half of DATA, then holds the connection until `go` is set."""
    go = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:HALF])
            self.wfile.flush()
            go.wait(60)
            self.wfile.write(DATA[HALF:])

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/b.edgebundle", go
    go.set()
    server.shutdown()
    server.server_close()


def test_what_has_arrived_is_on_disk_and_reported_before_the_rest(trickle, tmp_path: Path):
    url, go = trickle
    sha = hashlib.sha256(DATA).hexdigest()
    part = tmp_path / "staging" / f"{sha}.http.part"
    reported: list[float] = []
    result: list[Path] = []
    worker = threading.Thread(target=lambda: result.append(
        http_download(url, tmp_path / "staging", sha, len(DATA), progress=reported.append)), daemon=True)
    worker.start()
    wait_for(lambda: part.exists() and part.stat().st_size == HALF, what="the first half on disk")
    go.set()
    worker.join(60)
    assert result == [part] and part.read_bytes() == DATA and reported[-1] == 1.0

