"""Camera/video frames for the OTA daemon's inference loop (`edge-agent serve --source ...`).

The daemon's InferenceLoop runs whatever model is current and swaps models atomically during an
update. This feed gives it the LATEST frame of the source (a video file plays at its frame rate, like a camera) (older frames are dropped and counted),
preprocessed for the model that is current at that moment (so an update that changes the input
size or colour order just works), and postprocesses the outputs with that same model's manifest.

Observers (`add_observer`, pipeline.observe: the interface the serving API shares) see each answered
frame as a `LiveSample` after the model answered: the drift monitor and a running shadow run
(edge_agent.monitor). They run in the inference thread, so they must be cheap and never block (the
shadow run hands frames to its own worker).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from .channels import CLOSED, EMPTY, LatestSlot
from .sources import Source, SourceError, open_source
from .observe import LiveSample, Observer, Observers
from .stages import FrameInput, Postprocessor, Prepared, Preprocessor

log = logging.getLogger(__name__)
Sink = Callable[[dict[str, Any]], None]
__all__ = ["LiveFeed", "LiveSample", "Observer"]


class LiveFeed:
    """A FeedSource (model, i) -> feeds for InferenceLoop, plus its `on_result` hook."""

    def __init__(self, spec: str, sink: Sink | None = None, frame_timeout_s: float = 5.0,
                 reopen_delay_s: float = 2.0) -> None:
        self.spec = spec
        self.sink = sink
        self.frame_timeout_s = frame_timeout_s
        self.reopen_delay_s = reopen_delay_s
        self.slot = LatestSlot()
        self.frames = 0
        self.source_errors = 0
        self._source: Source | None = open_source(spec)  # fail fast: a bad --source is a startup error
        self._stages: dict[int, tuple[Preprocessor, Postprocessor]] = {}
        self._prepared = threading.local()
        self._observers = Observers()
        self._next_due = 0.0
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="source-reader", daemon=True)
        self._reader.start()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            if self._source is None:
                try:
                    self._source = open_source(self.spec)
                except SourceError as exc:
                    self.source_errors += 1
                    log.warning("source %s: %s; retrying in %.0fs", self.spec, exc, self.reopen_delay_s)
                    self._stop.wait(self.reopen_delay_s)
                    continue
            try:
                frame = self._source.read()
            except SourceError as exc:  # a live source that stayed down after its own reconnects
                self.source_errors += 1
                log.warning("source %s lost: %s", self.spec, exc)
                frame = None
            if frame is None:  # end of a file (served again from the start) or a lost stream
                self._source.close()
                self._source = None
                continue
            self._pace()
            self.frames += 1
            self.slot.put(frame)

    def _pace(self) -> None:
        """A video file plays at its own frame rate, as a camera would (a live source paces itself)."""
        src = self._source
        fps = getattr(src, "fps", None)
        if src is None or getattr(src, "live", True) or not fps:
            return
        now = time.monotonic()
        due = max(self._next_due, now - 1.0)  # after a stall (reopen), do not rush to catch up
        if due > now:
            self._stop.wait(due - now)
        self._next_due = due + 1.0 / fps

    def _for(self, model) -> tuple[Preprocessor, Postprocessor]:
        stages = self._stages.get(model.generation)
        if stages is None:
            stages = (Preprocessor(model.manifest), Postprocessor(model.manifest))
            self._stages = {model.generation: stages}  # older models are gone for good after a swap
        return stages

    def __call__(self, model, i: int) -> dict[str, np.ndarray]:
        frame = self.slot.get(timeout=self.frame_timeout_s)
        if frame is EMPTY or frame is CLOSED:
            raise RuntimeError(f"no frame from {self.spec} for {self.frame_timeout_s:.0f}s")
        prepared: Prepared = self._for(model)[0](frame)
        self._prepared.value = (model.generation, prepared, time.perf_counter())
        return prepared.feeds

    def add_observer(self, observer: Observer) -> None:
        self._observers.add_observer(observer)

    def remove_observer(self, observer: Observer) -> None:
        self._observers.remove_observer(observer)

    def on_result(self, model, outputs: list[np.ndarray]) -> None:
        generation, prepared, ready = self._prepared.value
        latency_ms = (time.perf_counter() - ready) * 1000.0
        observers = self._observers
        if (self.sink is None and not observers) or generation != model.generation:
            return
        result = self._for(model)[1](outputs, prepared.geometry)
        if self.sink is not None:
            ref = model.ref
            self.sink({"frame": prepared.frame.index, "at": round(time.time(), 3),
                       "model": ref.name if ref else model.manifest.name,
                       "version": ref.version if ref else model.manifest.version, **result})
        if observers:
            observers.notify(LiveSample(FrameInput(prepared.frame), model, prepared.feeds, outputs, latency_ms,
                                        result, prepared.geometry))

    def close(self) -> None:
        self._stop.set()
        self.slot.stop()
        self._reader.join(timeout=5)
        if self._source is not None:
            self._source.close()
