"""A CPU budget for the drift monitor: it may use at most `share` of one core, whatever the input rate.

On a camera the statistics cost 1-2 % of a frame (scripts/bench_monitor.py), but a tiny model served
to local apps answers a request in under 2 ms, where the same statistics (about 0.2 ms of numpy calls
on a small input) would cost 10 %. So the monitor observes a uniform sample of the live inputs: a
token bucket fills with `share` x elapsed wall time and each observation spends its own measured CPU
time; an input arriving with the bucket short of the last observation's cost (or, when one costs
more than the bucket holds, short of a full bucket) is not observed (counted). At camera rates every frame fits; at hundreds of requests a second, one in a few does.
Sampling keeps the window's distribution unbiased, it only stretches the time the window covers.

The plain pipeline (`edge-agent run --source`) budgets against the model's own work instead of wall time
(`InferenceClock`): the monitor may spend `share` of the inference time, so on a host whose cores the
runtime already fills (XNNPACK on 2 cores) the statistics cannot take more than that from inference, at any
frame rate (docs/detection.md, "Per-frame work besides inference").
"""

from __future__ import annotations

import threading
import time
from typing import Callable

DEFAULT_SHARE = 0.02  # of one core: well below the 5 % with room for the rest of the agent
INFERENCE_SHARE = 0.01  # of the inference time (plain pipeline): ~1 % of a YOLO pipeline's frame rate at most
BURST_S = 0.002  # CPU seconds the bucket holds after a quiet spell (a handful of observations)


class CpuBudget:
    """`run(fn)` calls fn when the budget allows (measuring its thread CPU time) and says whether it did."""

    def __init__(self, share: float = DEFAULT_SHARE, burst_s: float = BURST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share, self.burst_s, self.clock = share, burst_s, clock
        self._tokens, self._last, self._cost = burst_s, clock(), 0.0
        self._lock = threading.Lock()
        self.run_count = self.skipped = 0

    def run(self, fn: Callable[[], object]) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.share)
            self._last = now
            # An observation may cost more than the bucket holds (a GC pause inside one, a slow board):
            # waiting for `_cost` tokens would then wait for ever, and only a run lowers `_cost`. A full
            # bucket always buys one run; the debt it leaves is paid back at `share` before the next.
            if self._tokens < min(self._cost, self.burst_s):
                self.skipped += 1
                return False
            self._tokens -= self._cost  # reserved now: threads arriving meanwhile see the bucket as it will be
        c0 = time.thread_time()
        fn()
        cost = time.thread_time() - c0
        with self._lock:
            self._tokens += self._cost - cost  # the reservation was an estimate: settle with the real cost
            self._cost = cost if self.run_count == 0 else 0.8 * self._cost + 0.2 * cost
            self.run_count += 1
        return True


class InferenceClock:
    """A clock that advances with the model's inference time, not wall time: `CpuBudget(share,
    clock=InferenceClock())` lets a monitor spend at most `share` of what inference took."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def advance(self, ms: float) -> None:
        self.seconds += max(0.0, ms) / 1000.0

    def __call__(self) -> float:
        return self.seconds
