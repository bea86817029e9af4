"""Latency statistics with the vocabulary of TFLite's benchmark_model and onnxruntime_perf_test."""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterable

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize_ms(samples_ms: Iterable[float]) -> dict[str, float]:
    """count, min, mean, std, p50/p90/p95/p99, max (milliseconds) of latency samples."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    out = {
        "count": int(a.size),
        "min_ms": float(a.min()),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std()),
        "max_ms": float(a.max()),
    }
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(a, p))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


class RollingLatency:
    """A thread-safe rolling window of latency samples (for telemetry while serving)."""

    def __init__(self, window: int = 1000) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(ms)
            self.total += 1

    def summary(self) -> dict[str, float]:
        with self._lock:
            samples = list(self._samples)
        return summarize_ms(samples)
