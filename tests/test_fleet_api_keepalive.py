"""An API client that re-uses an idle connection after a few seconds is answered on it: the fleet server keeps idle
keep-alive connections longer than clients' own pools do (httpx retires its own after 5 s, uvicorn's
default), so a poll never meets a connection the server is closing ("connection reset by peer", seen in CI)."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from .fleet_http_helpers import FleetProcess, fleet_home, make_tokens


def test_an_idle_connection_is_still_answered_after_six_seconds(tmp_path, digits):
    home = fleet_home(tmp_path, digits.pub)
    token = make_tokens(home, "viewer")["viewer"]
    fleet = FleetProcess(home)
    try:
        url = urlsplit(fleet.http)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        auth = {"Authorization": f"Bearer {token}"}
        conn.request("GET", "/api/v1/whoami", headers=auth)
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        time.sleep(6)  # past uvicorn's 5 s default: the server closed the connection here before
        conn.request("GET", "/api/v1/whoami", headers=auth)
        again = conn.getresponse()
        assert again.status == 200 and b"viewer" in again.read()
        assert conn.sock is sock  # the same connection answered, not a new one
        conn.close()
    finally:
        fleet.stop()
