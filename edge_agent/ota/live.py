"""The model the agent is serving and the inference loop that keeps running across swaps.

The loop reads one reference (`LiveModels.current`) per inference. A swap loads and
health-checks the new session first, then replaces that reference in one assignment; the
old session is closed only after the loop has moved on to the new one. So no inference
fails or is dropped because of an update.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Callable

import numpy as np

from ..bundle import Manifest
from ..runtimes import ModelSession
from ..telemetry.latency import RollingLatency
from .model_check import SelfTestData, load_selftest
from .protocol import BundleRef

log = logging.getLogger(__name__)

_generation = count(1)

# A source gives the feeds for the next inference of a model (default: its self-test inputs).
FeedSource = Callable[["LiveModel", int], dict[str, np.ndarray]]


@dataclass
class LiveModel:
    """A loaded, health-checked model and what it came from."""

    slot: str
    ref: BundleRef | None
    manifest: Manifest
    session: ModelSession
    selftest: SelfTestData | None
    generation: int = field(default_factory=lambda: next(_generation))
    bundle_dir: Path | None = None  # where its files are (the drift monitor reads its reference statistics)

    @classmethod
    def from_slot(cls, slot: str, ref: BundleRef | None, manifest: Manifest, session: ModelSession,
                  bundle_dir) -> "LiveModel":
        return cls(slot, ref, manifest, session, load_selftest(bundle_dir, manifest), bundle_dir=Path(bundle_dir))


def selftest_source(model: LiveModel, i: int) -> dict[str, np.ndarray]:
    """Cycle through the model's recorded self-test inputs."""
    if model.selftest is None or len(model.selftest) == 0:
        raise RuntimeError("model has no self-test inputs to feed the inference loop")
    return model.selftest.feeds(i % len(model.selftest), model.manifest)


class InferenceLoop:
    """Runs inference continuously on whatever model is current; counts, times, never stops."""

    def __init__(self, source: FeedSource = selftest_source, interval_s: float = 0.05,
                 on_result: Callable[["LiveModel", list[np.ndarray]], None] | None = None) -> None:
        self.source = source
        self.on_result = on_result
        self.interval_s = interval_s
        self.current: LiveModel | None = None
        self.latency = RollingLatency()
        self.inferences = 0
        self.errors = 0
        self.last_error: str | None = None
        self.by_generation: dict[int, list[int]] = {}  # model generation -> [inferences, errors]
        self.ends: deque[float] = deque(maxlen=20000)  # completion times, for swap-pause figures
        self._seen_generation = 0
        # Called with the new model before the old session is closed; each may block until its own users
        # of the old model are done (edge_agent.serving's ModelHolder.swap lets in-flight requests finish).
        self.swap_listeners: list[Callable[[LiveModel | None], object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The inference thread is running (the systemd watchdog is fed only while it is)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            model = self.current  # ONE reference per inference
            if model is None:
                self._stop.wait(0.1)
                continue
            try:
                feeds = self.source(model, i)
                t0 = time.perf_counter()
                outputs = model.session.run(feeds)
                t1 = time.perf_counter()
                if self.on_result is not None:
                    self.on_result(model, outputs)
                self.latency.add((t1 - t0) * 1000.0)
                self.inferences += 1
                self._count(model.generation, 0)
                self.ends.append(t1)
            except Exception as exc:  # noqa: BLE001 - count it, keep serving
                self.errors += 1
                self._count(model.generation, 1)
                self.last_error = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                log.warning("inference failed: %s", self.last_error)
            self._seen_generation = model.generation
            i += 1
            if self.interval_s > 0:
                self._stop.wait(self.interval_s)

    def _count(self, generation: int, which: int) -> None:
        counts = self.by_generation.get(generation)
        if counts is None:
            for old in sorted(self.by_generation)[:-3]:  # keep the last few models' counts
                del self.by_generation[old]
            counts = self.by_generation[generation] = [0, 0]
        counts[which] += 1

    def counts(self, generation: int) -> tuple[int, int]:
        """(successful inferences, errors) of the model with this generation."""
        ok, err = self.by_generation.get(generation, (0, 0))
        return ok, err

    def swap(self, new: LiveModel | None, wait_s: float = 10.0) -> LiveModel | None:
        """Make `new` current (one assignment); close the previous session once the loop left it."""
        old, self.current = self.current, new
        for listener in self.swap_listeners:
            listener(new)
        if old is not None and old is not new:
            deadline = time.monotonic() + wait_s
            while (self._thread.is_alive() and new is not None and self._seen_generation < new.generation
                   and time.monotonic() < deadline):
                time.sleep(0.002)
            old.session.close()
        return old

    def max_gap_ms(self, since: float = 0.0) -> float:
        """Largest pause between consecutive inference completions after `since` (perf_counter)."""
        ends = [t for t in list(self.ends) if t >= since]
        if len(ends) < 2:
            return 0.0
        return float(np.max(np.diff(ends)) * 1000.0)
