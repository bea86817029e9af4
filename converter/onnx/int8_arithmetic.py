"""Which int8 arithmetic the accuracy gate measures: the target's, not a flaw of the host's CPU.

ONNX Runtime's fused u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI: many AMD EPYC
and older Intel hosts) add pairs of uint8 x int8 products in int16 (vpmaddubsw), which saturates: a pair of
255 x 127 products comes out as 32767 instead of 64770. ARM's NEON kernels (every Raspberry Pi and Jetson
profile) and VNNI widen first and compute the exact sum. A gate run on such a host with the fused kernels
would judge a Pi bundle by arithmetic the Pi never does (measured: the digits CNN lost 2.7 points of top-1
on an AVX2 EPYC and passed on AVX-512 VNNI). So for a non-x86 target, int8 models are evaluated with ORT's
basic graph optimizations only: QuantizeLinear/DequantizeLinear then run as written (float arithmetic on
the int8 grid: the exact result up to float rounding). Latency is always timed with the fused kernels.
"""

from __future__ import annotations

import functools
import logging

from edge_agent.runtimes.int8_host import X86, host_saturates, saturating_int8

log = logging.getLogger(__name__)

def exact_int8_for(target_arch: str) -> bool:
    """Evaluate int8 models with exact arithmetic for a target of this arch? (host saturates, target does not)."""
    exact = host_saturates() and target_arch.lower() not in X86
    if exact:
        _note_once()
    return exact


@functools.lru_cache(maxsize=1)
def _note_once() -> None:
    log.info("this host's CPU has no VNNI: ONNX Runtime's int8 kernels saturate here, the target's do not; int8 "
             "accuracy is measured with exact int8 arithmetic, latency with this host's kernels")


__all__ = ["exact_int8_for", "host_saturates", "saturating_int8"]
