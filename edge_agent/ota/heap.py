"""Keep the agent's freed heap memory for reuse instead of handing it back to the kernel after every message.

paho reads each MQTT packet into buffers of its own size (up to 128 KiB and more for block frames) and
frees them once the message is handled. glibc's malloc returns freed memory at the top of the heap to the
kernel once it exceeds a threshold that it adjusts by itself; whether it does so after a given message
depends on the order of allocations and frees, so it changes with timing. When it does, the next packet's
buffers are fresh pages: the kernel zeroes every 4 KiB page on its first touch. Measured on the block
download (docs/fleet.md, "One device, one bundle"): those page faults were up to half of a receiving
process's CPU, 0.9 against 3.0 ms per MB for plain paho, and the same code swung between the two from one
run to the next. Fixed thresholds end the swing: freed memory up to `KEEP_FREE` at the top of the heap stays
in the process for the next packet, and buffers below `MMAP_ABOVE` come from the heap (block frames up to
2 MiB; larger ones, and large arrays, keep their own mappings, handed back when freed, so that a heap
fragmented by long-lived objects cannot hold on to them).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_FREE = 16 << 20  # freed memory at the top of the heap kept for reuse, at most
MMAP_ABOVE = 4 << 20  # larger buffers get their own mapping (returned to the kernel when freed)

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds for this process (once); False where malloc is not glibc's."""
    global _done
    if _done is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError, TypeError):  # not glibc: musl exports a stub, other systems nothing
            _done = False
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREE) == 1
        if not _done:
            log.debug("malloc thresholds left as they are (no glibc mallopt)")
    return _done


__all__ = ["KEEP_FREE", "keep_freed_memory"]
