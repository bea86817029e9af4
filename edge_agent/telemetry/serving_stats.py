"""Counters of the local serving endpoint (edge_agent.serving), read by Prometheus and telemetry."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .latency import RollingLatency


class ServingStats:
    """Requests by protocol and status, rolling latency, batch sizes, queue depth. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (protocol, HTTP status) -> count
        self.batches: Counter[int] = Counter()  # rows per model run -> count
        self.latency = RollingLatency()
        self.queue_depth = lambda: 0  # set by the server: how many requests wait for the model

    def request(self, protocol: str, status: int, ms: float | None) -> None:
        with self._lock:
            self.requests[(protocol, status)] += 1
        if ms is not None and status < 400:
            self.latency.add(ms)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batches[rows] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests = dict(self.requests)
            batches = dict(self.batches)
        return {
            "requests": [{"protocol": p, "status": s, "count": n} for (p, s), n in sorted(requests.items())],
            "errors": sum(n for (_, s), n in requests.items() if s >= 400),
            "latency_ms": self.latency.summary(),
            "batches": {str(k): v for k, v in sorted(batches.items())},
            "queue_depth": self.queue_depth(),
        }
