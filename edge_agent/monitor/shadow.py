"""Shadow run: the new model answers the same live inputs as the active one before it may take over.

Live inputs are camera frames and served requests alike (pipeline.observe.LiveSample, from any
LiveInputs). The active model is never made to wait: each input is offered to the shadow run after
the active model answered, every `every`-th one is handed to a worker thread at low CPU priority
(nice +10) through a one-sample slot, and one that arrives while the worker is still busy is
skipped (counted as `skipped_busy`). The worker prepares the input as it came (the frame, the
encoded image, the client tensors) for the NEW model's manifest (its input size, colour order or
layout may differ), runs it, postprocesses, and scores agreement with the active model's result
(monitor.agreement); an input the new model cannot take or run counts as a disagreement (after a
switch, that request would fail). When a latency budget is set and the active model's median
latency during the run exceeds it, the sampling interval doubles (reported as `every`).

Verdicts: `passed` (agreement >= min_agreement over `frames` frames), `failed` (below it; stops
early once it cannot reach the minimum any more), `skipped` (no live inputs, or fewer than
MIN_FRAMES_TO_DECIDE frames within `timeout_s`). Why a skipped shadow switches: see docs/monitoring.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..bundle import Manifest
from ..errors import AgentError
from ..ota.protocol import ShadowGate
from ..pipeline.observe import LiveSample
from ..pipeline.stages import Postprocessor
from ..runtimes import ModelSession
from ..telemetry.latency import RollingLatency
from .agreement import BoxMatcher, frame_agreement

log = logging.getLogger(__name__)

MIN_FRAMES_TO_DECIDE = 30  # fewer compared frames than this (or than asked for) within the timeout: skipped
WORKER_NICE = 10


class ShadowFailed(AgentError, RuntimeError):
    """The new model disagreed with the active one on live inputs: it is not switched to."""

    code_name = "shadow-failed"
    kind = "shadow_failed"


@dataclass
class ShadowReport:
    """The figures the agent reports (reported.shadow) and the fleet shows per rollout stage."""

    verdict: str  # passed | failed | skipped
    frames: int  # frames both models answered
    wanted: int
    min_agreement: float
    agreement: float | None
    active_p50_ms: float | None
    candidate_p50_ms: float | None
    every: int
    offered: int  # live frames seen while the shadow ran
    skipped_busy: int
    seconds: float
    reason: str
    deployment_id: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        agree = "n/a" if self.agreement is None else f"{self.agreement:.3f}"
        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f} ms"

        return (f"shadow {self.verdict}: agreement {agree} (minimum {self.min_agreement:g}) over {self.frames} "
                f"live frames; p50 active {ms(self.active_p50_ms)}, new {ms(self.candidate_p50_ms)}; {self.reason}")


def skipped(gate: ShadowGate, reason: str) -> ShadowReport:
    return ShadowReport("skipped", 0, gate.frames, gate.min_agreement, None, None, None, gate.every, 0, 0, 0.0, reason)


class ShadowRun:
    """One shadow run of `session` (the health-checked new model). Feed it with `observe`, then `run()`."""

    def __init__(self, session: ModelSession, manifest: Manifest, gate: ShadowGate,
                 latency_budget_ms: float | None = None, cancel: threading.Event | None = None,
                 matcher: BoxMatcher | None = None) -> None:
        self.session, self.manifest, self.gate, self.budget = session, manifest, gate, latency_budget_ms
        self.cancel = cancel or threading.Event()
        self.post = Postprocessor(manifest)
        self.agree = frame_agreement(self.post.kind, matcher)
        self.agree_by_name = frame_agreement(self.post.kind, matcher, by_name=True)  # both models have labels
        self.every = max(1, gate.every)
        self.active_latency, self.candidate_latency = RollingLatency(), RollingLatency()
        self.offered = self.skipped_busy = self.frames = 0
        self.disagreement = 0.0
        self.scored = 0
        self.unscored = 0  # frames the new model answered that have nothing to compare (postprocess kind none)
        self.errors = 0
        self._slot: LiveSample | None = None
        self._cv = threading.Condition()  # also guards the counters: camera and request threads observe at once
        self._active_post: tuple[int, Postprocessor] | None = None
        self._done = threading.Event()

    # -- the inference thread's side: cheap, never blocks ---------------------------------------

    def observe(self, sample: LiveSample) -> None:
        """A live input the active model answered (a pipeline.observe.Observer)."""
        if self._done.is_set():
            return
        self.active_latency.add(sample.latency_ms)
        with self._cv:
            self.offered += 1
            if self.budget and self.offered % 20 == 0:
                self._slow_down_if_over_budget()
            if self.offered % self.every:
                return
            if self._slot is not None:
                self.skipped_busy += 1
                return
            self._slot = sample
            self._cv.notify()

    def _slow_down_if_over_budget(self) -> None:
        p50 = self.active_latency.summary().get("p50_ms")
        if p50 is not None and self.budget is not None and p50 > self.budget and self.every < 64:
            self.every *= 2
            log.info("shadow: active model at p50 %.2f ms over its %.2f ms budget: sampling every %d inputs",
                     p50, self.budget, self.every)

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except (OSError, AttributeError):  # not Linux, or not allowed: still a separate thread
            pass
        while not self._done.is_set():
            with self._cv:
                while self._slot is None and not self._done.is_set():
                    self._cv.wait(0.2)
                item, self._slot = self._slot, None
            if item is None:
                continue
            try:
                active_result = self._active_result(item)
            except Exception as exc:  # noqa: BLE001 - the active model's own answer cannot be read: not a frame
                log.warning("shadow: cannot postprocess the active model's answer: %s", exc)
                continue
            try:
                feeds, geometry = item.input.prepare(self.manifest)
                t0 = time.perf_counter()
                outputs = self.session.run(feeds)
                self.candidate_latency.add((time.perf_counter() - t0) * 1000.0)
                result = self.post(outputs, geometry)
            except Exception as exc:  # noqa: BLE001 - a new model failing on live inputs disagrees
                self.errors += 1
                log.warning("shadow: the new model failed on a live input: %s", exc)
                result = {"kind": "error"}
            active_labels = getattr(getattr(item.model, "manifest", None), "labels", None)
            agree = self.agree_by_name if active_labels and self.manifest.labels else self.agree
            score = agree(active_result, result) if result.get("kind") != "error" else 0.0
            self.frames += 1
            if score is not None:
                self.scored += 1
                self.disagreement += 1.0 - score
            else:
                self.unscored += 1
            if self.frames >= self.gate.frames or self._hopeless():
                self._done.set()

    def _active_result(self, sample: LiveSample) -> dict[str, Any]:
        """The active model's postprocessed answer (row 0): its producer's, or made here (served tensors)."""
        if sample.result is not None:
            return sample.result
        model = sample.model
        if self._active_post is None or self._active_post[0] != model.generation:
            self._active_post = (model.generation, Postprocessor(model.manifest))
        return self._active_post[1](sample.outputs, sample.geometry)

    def _hopeless(self) -> bool:
        """Even if every remaining frame agreed, the minimum can no longer be reached."""
        return self.disagreement > (1.0 - self.gate.min_agreement) * self.gate.frames + 1e-9

    # -- the update worker's side -------------------------------------------------------------

    def run(self) -> ShadowReport:
        """Block until the gate's frames were compared, it cannot pass any more, the timeout, or cancel."""
        t0 = time.monotonic()
        worker = threading.Thread(target=self._work, name="shadow", daemon=True)
        worker.start()
        deadline = t0 + self.gate.timeout_s
        while not self._done.wait(0.1):
            if self.cancel.is_set() or time.monotonic() >= deadline:
                break
        self._done.set()
        with self._cv:
            self._cv.notify_all()
        worker.join(timeout=30)
        return self._report(time.monotonic() - t0)

    def _report(self, seconds: float) -> ShadowReport:
        g = self.gate
        # Outputs without a comparable kind: only the new model's errors can disagree, so its answered frames
        # agree. Scored on the errors alone, one error in 300 frames was agreement 0.0 and failed the update.
        judged = self.scored + (self.unscored if self.errors else 0)
        agreement = round(1.0 - self.disagreement / judged, 4) if judged else None
        figures = dict(wanted=g.frames, min_agreement=g.min_agreement, agreement=agreement,
                       active_p50_ms=self.active_latency.summary().get("p50_ms"),
                       candidate_p50_ms=self.candidate_latency.summary().get("p50_ms"), every=self.every,
                       offered=self.offered, skipped_busy=self.skipped_busy, seconds=round(seconds, 2))
        if self.cancel.is_set():
            return ShadowReport("skipped", self.frames, reason="cancelled: a newer deployment arrived", **figures)
        if self._hopeless():
            why = f"{self.errors} errors of the new model" if self.errors else "the new model answers differently"
            early = f"stopped early: the minimum is out of reach over {g.frames} frames; " if self.frames < g.frames else ""
            return ShadowReport("failed", self.frames, reason=f"{early}{why} on this device's inputs", **figures)
        if self.frames < min(g.frames, MIN_FRAMES_TO_DECIDE):
            why = ("no live inputs" if self.offered == 0 else f"only {self.frames} frames compared")
            return ShadowReport("skipped", self.frames, reason=f"{why} within {g.timeout_s:g}s", **figures)
        if agreement is not None and agreement < g.min_agreement:
            return ShadowReport("failed", self.frames, reason="agreement below the minimum", **figures)
        return ShadowReport("passed", self.frames, reason="agreement holds" if self.scored > self.errors
                            else f"outputs have no comparable kind: judged on the new model's errors ({self.errors})",
                            **figures)
