"""Run the API/console app with uvicorn in a thread of `edge-fleet serve`, beside the MQTT side.

HTTPS when a certificate and key are given (uvicorn's ssl_certfile/ssl_keyfile); plain HTTP
otherwise, with a warning when it listens beyond the loopback (tokens would cross the network
in clear text).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
import time
from pathlib import Path

import uvicorn

from ..errors import FleetUsageError, PortUnavailable
from .app import create_app
from .deps import ApiState

log = logging.getLogger(__name__)


# Idle keep-alive connections are kept this long (uvicorn's default is 5 s, which equals httpx's own
# pool expiry: a client re-using a connection at the moment the server drops it gets "connection reset"; seen in CI).
# Longer than every common client's expiry, so the client always retires an idle connection first (nginx: 75 s).
KEEP_ALIVE_S = 75


class HttpServer:
    """`start()` returns once the socket listens; `url` then has the real port (port 0: a free one)."""

    def __init__(self, st: ApiState, host: str = "127.0.0.1", port: int = 8080, cert: Path | None = None,
                 key: Path | None = None, console: bool = True) -> None:
        if (cert is None) != (key is None):
            raise FleetUsageError("--tls-cert and --tls-key go together")
        if cert is not None and key is not None:
            check_tls_pair(Path(cert), Path(key))
        self.host, self.port, self.tls = host, port, cert is not None
        config = uvicorn.Config(create_app(st, console=console), host=host, port=port, log_level="warning",
                                ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
                                timeout_graceful_shutdown=3, access_log=False, server_header=False,
                                timeout_keep_alive=KEEP_ALIVE_S)
        self._server = uvicorn.Server(config)
        self._state = st
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "HttpServer":
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise PortUnavailable(f"the HTTP server did not start on {self.host}:{self.port} (port in use?)")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        if not self.tls and not _loopback(self.host):
            log.warning("console/API on %s without TLS: tokens cross the network in clear text "
                        "(give --tls-cert and --tls-key)", self.url)
        return self

    def stop(self) -> None:
        self._state.stopping[0] = True  # live streams end cleanly first, instead of being cut at shutdown
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def check_tls_pair(cert: Path, key: Path) -> None:
    """Load the pair as uvicorn will: a file that is not a PEM certificate (or not its key) raised in uvicorn's
    thread, which printed a traceback and then "did not start ... (port in use?)" with the port's exit code."""
    for option, f in (("--tls-cert", cert), ("--tls-key", key)):
        if not f.is_file():
            raise FleetUsageError(f"{option} {f} does not exist or is not a file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key), password=lambda: "")  # never a prompt
    except ssl.SSLError as exc:
        raise FleetUsageError(f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate (chain) and its "
                              f"private key: {exc.reason or exc}") from None
    except OSError as exc:
        raise FleetUsageError(f"cannot read --tls-cert {cert} or --tls-key {key}: {exc.strerror or exc}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
