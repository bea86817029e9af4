"""Whether this CPU's ONNX Runtime int8 kernels saturate: the one place both the converter and the agent ask.

ORT's fused u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI: many AMD EPYC and older Intel
hosts) add pairs of uint8 x int8 products in int16 (vpmaddubsw), which saturates: a pair of 255 x 127 products
comes out as 32767 instead of 64770. ARM's NEON kernels (every Raspberry Pi and Jetson) and VNNI widen first and
compute the exact sum. With basic graph optimizations only, QuantizeLinear/DequantizeLinear run as written (float
arithmetic on the int8 grid): the exact result up to float rounding, what a Pi computes.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags of CPUs whose int8 dot products widen
X86 = ("x86_64", "amd64", "i386", "i686")


def saturating_int8(machine: str, cpuinfo: str) -> bool:
    """True when ORT's u8s8 kernels on this CPU sum products in int16 (x86 without any VNNI flag)."""
    if machine.lower() not in X86:
        return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return not any(f in flags for f in VNNI_FLAGS)


@functools.lru_cache(maxsize=1)
def host_saturates() -> bool:
    """saturating_int8 for this host (read once)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False  # not Linux: nothing to read, assume the kernels are exact
    return saturating_int8(platform.machine(), cpuinfo)


__all__ = ["VNNI_FLAGS", "X86", "host_saturates", "saturating_int8"]
