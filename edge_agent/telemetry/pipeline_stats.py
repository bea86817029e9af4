"""Live figures of a running camera pipeline: per-stage latency, FPS, drops, errors, model, system.

One `PipelineStats` is shared by the pipeline threads (writers) and the exporters (Prometheus,
health endpoint, MQTT telemetry), which read `snapshot()`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .latency import RollingLatency
from .system import system_snapshot

STAGES = ("decode", "preprocess", "inference", "postprocess", "end_to_end")


@dataclass
class ModelInfo:
    name: str
    version: int
    runtime: str = ""
    precision: str = ""
    sha256: str | None = None


@dataclass
class PipelineStats:
    """Counters and rolling latency windows; every method is thread-safe."""

    model: ModelInfo | None = None
    source: str = ""
    window: int = 1000
    fps_window_s: float = 5.0
    latency: dict[str, RollingLatency] = field(default_factory=dict)
    captured: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    max_stale_frames: int = 0
    started_at: float = field(default_factory=time.monotonic)
    last_frame_at: float | None = None
    _done: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for stage in STAGES:
            self.latency.setdefault(stage, RollingLatency(self.window))

    def add_latency(self, stage: str, ms: float) -> None:
        self.latency[stage].add(ms)

    def count_captured(self) -> None:
        with self._lock:
            self.captured += 1

    def count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def frame_done(self, stale_frames: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self.processed += 1
            self.last_frame_at = now
            self.max_stale_frames = max(self.max_stale_frames, stale_frames)
            self._done.append(now)
            while self._done and now - self._done[0] > self.fps_window_s:
                self._done.popleft()

    def fps(self) -> float:
        """Processed frames per second over the last `fps_window_s` seconds."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._done if now - t <= self.fps_window_s]
            if len(recent) < 2:
                return 0.0
            span = max(now - recent[0], recent[-1] - recent[0])
            return (len(recent) - 1) / span if span > 0 else 0.0

    def last_frame_age(self) -> float | None:
        with self._lock:
            return None if self.last_frame_at is None else time.monotonic() - self.last_frame_at

    def snapshot(self, system: bool = True) -> dict[str, Any]:
        """Everything, as plain JSON-able data (latencies in ms)."""
        with self._lock:
            counts = {
                "captured": self.captured,
                "processed": self.processed,
                "dropped": self.dropped,
                "errors": self.errors,
                "max_stale_frames": self.max_stale_frames,
            }
        age = self.last_frame_age()
        out: dict[str, Any] = {
            "model": None if self.model is None else dict(self.model.__dict__),
            "source": self.source,
            **counts,
            "fps": round(self.fps(), 3),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "last_frame_age_s": None if age is None else round(age, 3),
            "latency_ms": {stage: self.latency[stage].summary() for stage in STAGES},
        }
        if system:
            out["system"] = system_snapshot()
        return out
