"""Free loopback ports for servers the tests start, chosen outside the kernel's ephemeral range.

A port from bind(0) comes from the ephemeral range (32768-60999 on Linux), the same pool every
outbound connection and every bind(0) of another worker draws from: between picking it and the
server binding it (seconds, for ejabberd or PostgreSQL) another process could take it. CI once
failed on exactly that (ejabberd node 1: eaddrinuse). Ports below the range are only ever taken
on purpose, so a random free one there is safe from that race.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 20000  # above well-known service ports that a machine may run


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nobody holds now and the kernel will not hand to an outbound connection."""
    high = _ephemeral_low() - 1
    if high > _FLOOR + 1000:
        for _ in range(200):
            port = random.randint(_FLOOR, high)
            if _bindable(port):
                return port
    with socket.socket() as s:  # an odd range setting: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
