"""The one interface every broker kind implements, and what they share (ports, process reaping).

A `Broker` is a handle: `url`, `host`, `port`, `kind`, `pid`, `running`, `start()`, `stop()`,
`restart()` and a context manager. Managed kinds (a Mosquitto child, in-process amqtt) start
and stop a real broker; the external kind only stands for a broker someone else runs, so the
fleet server treats every case the same way.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import signal
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import ClassVar

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class Broker(ABC):
    """Handle on an MQTT broker. Managed kinds are created by `start_broker()`."""

    kind: ClassVar[str]
    managed: ClassVar[bool] = True  # False: started and stopped by someone else

    def __init__(self, host: str, port: int, data_dir: Path | None, tls: bool = False) -> None:
        self.host, self.port, self.data_dir, self.tls = host, port, data_dir, tls

    @property
    def url(self) -> str:
        """``mqtt://host:port`` URL of the listener (``mqtts://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process (None when it runs in this process, elsewhere, or not at all)."""
        return None

    @property
    @abstractmethod
    def running(self) -> bool:
        """True while the broker is serving (as far as this handle knows)."""

    def reload_users(self, users: dict[str, str]) -> None:
        """Replace the logins of the running broker (managed kinds only)."""
        raise NotImplementedError(f"{self.kind} broker logins are managed elsewhere")

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    def start(self) -> "Broker":
        """Start serving (raises BrokerStartError with the reason); a running broker is left alone."""
        if not self.running:
            self._start()
        _LIVE.add(self)
        return self

    def stop(self) -> None:
        """Stop the broker (idempotent). Mosquitto gets SIGTERM, then SIGKILL after a timeout."""
        self._stop()
        _LIVE.discard(self)

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence directory."""
        self.stop()
        self.start()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} running={self.running}>"


_LIVE: set[Broker] = set()


@atexit.register
def _stop_live_brokers() -> None:
    for broker in list(_LIVE):
        try:
            broker.stop()
        except Exception:  # noqa: BLE001 - interpreter is exiting
            log.exception("failed to stop %s broker at exit", broker.kind)


def free_port(host: str) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when its parent dies (best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux / no libc: nothing we can do
        pass
