"""Board health the kernel exposes: CPU temperature, throttling (Raspberry Pi), process memory.

Every reader returns None where the board does not expose the figure (containers, x86 VMs).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from typing import Any

log = logging.getLogger(__name__)


def cpu_temperature_c(pattern: str = "/sys/class/thermal/thermal_zone*") -> float | None:
    """Hottest CPU-ish thermal zone in degrees Celsius, or None when there is none."""
    best: float | None = None
    for zone in sorted(glob.glob(pattern)):
        try:
            with open(os.path.join(zone, "temp")) as f:
                milli = int(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(zone, "type")) as f:
                kind = f.read().strip().lower()
        except OSError:
            kind = ""
        if kind and not any(k in kind for k in ("cpu", "soc", "x86_pkg", "acpitz", "thermal")):
            continue
        c = milli / 1000.0
        best = c if best is None else max(best, c)
    return best


def throttled_flags() -> int | None:
    """`vcgencmd get_throttled` as an integer bit field (Raspberry Pi), or None when unavailable."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
        return int(out.strip().split("=", 1)[1], 16)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        log.debug("vcgencmd get_throttled failed", exc_info=True)
        return None


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable (what new allocations can take without swapping, Linux), or None where there is none."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def system_snapshot() -> dict[str, Any]:
    return {"cpu_temperature_c": cpu_temperature_c(), "throttled": throttled_flags(), "rss_bytes": rss_bytes()}
