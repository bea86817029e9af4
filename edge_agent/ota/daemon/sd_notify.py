"""systemd's readiness and watchdog protocol (sd_notify(3)) without libsystemd: one datagram per message.

systemd passes NOTIFY_SOCKET (a unix datagram socket: a path, or `@name` for an abstract one) to a
`Type=notify` service, and WATCHDOG_USEC (with WATCHDOG_PID) when the unit has `WatchdogSec=`. The agent
says READY=1 once it serves its model, then WATCHDOG=1 every half interval while its main loop and its
inference thread are alive: a hung agent is restarted by systemd. Outside systemd nothing is set and
every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


def _address(value: str | None) -> str | None:
    if not value or not (value.startswith("/") or value.startswith("@")):
        return None  # unset, or a kind of address (vsock) the agent does not speak
    return "\0" + value[1:] if value.startswith("@") else value


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd when it asked for them."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET"))
        self.watchdog_s = _watchdog_s(env) if self.address else None
        self._next_ping = 0.0

    def notify(self, *fields: str) -> bool:
        """Send `fields` (KEY=VALUE) as one datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or the socket not ours: never take the agent down for it
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping_watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1 if half the watchdog interval has passed since the last one."""
        if self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_s / 2
        return self.notify("WATCHDOG=1")
