"""The agent's live monitors on everything its model answers: camera/stream frames (`edge-agent serve
--source`) and requests of local apps (`edge-agent serve --http`):

    DriftWatch     one DriftMonitor per served model, against that model's bundle reference
    LiveShadow     a ShadowRunner (ota.states) that shadows the new model on every live input

Both observe pipeline.observe.LiveInputs (the LiveFeed, the serving InferenceService), which hand
them the same LiveSample, so a served request counts as a live frame for drift and shadow alike.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..bundle import REFERENCE_STATS_FILE, Manifest
from ..ota.protocol import ShadowGate
from ..pipeline.observe import LiveInputs, LiveSample
from ..runtimes import ModelSession
from .budget import INFERENCE_SHARE, CpuBudget, InferenceClock
from .drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW, DriftConfig, DriftMonitor, DriftSnapshot
from .reference import ReferenceStats
from .shadow import ShadowReport, ShadowRun, skipped

log = logging.getLogger(__name__)


def load_reference(bundle_dir: Any) -> ReferenceStats | None:
    """The bundle's reference statistics, or None (older bundle without them, or unreadable: logged)."""
    if bundle_dir is None:
        return None
    path = bundle_dir / REFERENCE_STATS_FILE
    if not path.is_file():
        return None
    try:
        return ReferenceStats.from_json(path.read_bytes())
    except ValueError as exc:
        log.warning("%s: %s: drift is not monitored for this model", path, exc)
        return None


def drift_monitor_for(manifest: Manifest, reference: ReferenceStats | None, config: DriftConfig) -> DriftMonitor:
    post = manifest.postprocess
    from ..pipeline.postprocess import served_output

    kind = post.kind if post else "classification"
    spec = manifest.inputs[0]
    return DriftMonitor(reference, layout=spec.layout, softmax=post.softmax if post else True,
                        kind=kind, config=config, model=f"{manifest.name}:{manifest.version}",
                        output_index=served_output(manifest) if kind == "classification" else 0,
                        source_layout=spec.source_layout)


@dataclass
class _Watched:
    """The served model's monitor, and the live inputs of that model the CPU budget left out."""

    generation: int
    monitor: DriftMonitor
    not_sampled: int = 0


class DriftWatch:
    """Observer: drift of the live frames against the served model's reference (restarts on a swap).

    `follow` is an InferenceLoop swap listener: a switched model's window starts at the switch, not at its
    first live input, so the reported drift never shows the previous model's state under the new one (an
    OTA switch on an idle camera or API kept reporting the old model's `drift` until an input came)."""

    def __init__(self, config: DriftConfig | None = None, budget: CpuBudget | None = None) -> None:
        self.config = config or DriftConfig()
        self.budget = budget or CpuBudget()  # at most 2 % of a core, however many requests come (monitor.budget)
        self._current: _Watched | None = None  # the model generation and its monitor, swapped as one
        self._lock = threading.Lock()  # camera and request threads observe at once

    @property
    def monitor(self) -> DriftMonitor | None:
        current = self._current
        return current.monitor if current else None

    def __call__(self, sample: LiveSample) -> None:
        model, current = sample.model, self._current
        if current is None or model.generation != current.generation:
            with self._lock:
                current = self._current
                if current is not None and model.generation < current.generation:
                    return  # a request still finishing on the model swapped out: not the new model's window
                if current is None or model.generation != current.generation:
                    self._current = current = self._watch(model)
        monitor = current.monitor
        if not self.budget.run(lambda: monitor.observe(next(iter(sample.feeds.values())), sample.outputs,
                                                       sample.result)):
            with self._lock:
                current.not_sampled += 1

    def follow(self, model: Any) -> None:
        """The served model changed (a LiveModel, or None): its drift restarts now. Before the first live input
        nothing is watched (an agent without live inputs reports no drift), and nothing starts here."""
        with self._lock:
            current = self._current
            if current is None or (model is not None and model.generation <= current.generation):
                return  # not watching yet, or a live input of the new model already started its window
            try:
                self._current = self._watch(model) if model is not None else None
            except Exception as exc:  # noqa: BLE001 - a swap listener must not fail the swap; the next input retries
                log.warning("drift monitor for the new model: %s", exc)
                self._current = None

    def _watch(self, model: Any) -> _Watched:
        return _Watched(model.generation, drift_monitor_for(model.manifest, load_reference(model.bundle_dir),
                                                            self.config))

    def snapshot(self) -> DriftSnapshot | None:
        current = self._current
        if current is None:
            return None
        snap = current.monitor.snapshot()
        snap.live["not_sampled"] = current.not_sampled  # this model's live inputs left out (CPU budget)
        return snap


class PipelineDrift:
    """Observer of a plain pipeline (`edge-agent run --source`): one model's DriftMonitor, fed a uniform sample
    of the frames within `share` of the model's inference time (monitor.budget.InferenceClock); share None:
    every frame, whatever it costs. A window then holds the last `window` *observed* frames."""

    def __init__(self, monitor: DriftMonitor, share: float | None = INFERENCE_SHARE) -> None:
        self.monitor = monitor
        self.clock = InferenceClock()
        self.budget = CpuBudget(share, clock=self.clock) if share else None

    def __call__(self, sample: LiveSample) -> None:
        def observe() -> None:
            self.monitor.observe(next(iter(sample.feeds.values())), sample.outputs, sample.result)

        if self.budget is None:
            observe()
            return
        self.clock.advance(sample.latency_ms)
        self.budget.run(observe)

    @property
    def not_sampled(self) -> int:
        return self.budget.skipped if self.budget else 0

    def snapshot(self) -> DriftSnapshot:
        snap = self.monitor.snapshot()
        snap.live["not_sampled"] = self.not_sampled  # frames left out to keep within the budget
        return snap


def pipeline_drift(manifest: Manifest, bundle_dir: Any, config: DriftConfig,
                   share: float | None = INFERENCE_SHARE) -> PipelineDrift:
    """The plain pipeline's drift observer for this bundle (the CLI and scripts/bench_detect.py use this one)."""
    return PipelineDrift(drift_monitor_for(manifest, load_reference(bundle_dir), config), share)


def add_drift_arguments(group: Any) -> None:
    """--drift-window and --drift-threshold, for every command that watches live frames."""
    group.add_argument("--drift-window", type=_frames, default=DEFAULT_WINDOW, metavar="FRAMES",
                       help=f"score drift (PSI against the bundle's reference statistics) over the last FRAMES live "
                       f"frames (default {DEFAULT_WINDOW}; docs/monitoring.md)")
    group.add_argument("--drift-threshold", type=_psi, default=DEFAULT_THRESHOLD, metavar="PSI",
                       help=f"raise the `drift` state when a feature's PSI exceeds this (default {DEFAULT_THRESHOLD}: "
                       "a significant shift)")


def _psi(text: str) -> float:
    """argparse type: a PSI >= 0 (inf: never raise drift). `nan` reported `drift ok` at any PSI (no comparison
    with nan holds) and a negative threshold `drift` on every window."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a PSI >= 0 (0.25: a significant shift), got {text!r}")
    return value


def _frames(text: str) -> int:
    """argparse type: a whole number of frames >= 50 (PSI over 10 bins is biased by about 9/frames)."""
    if not text.isdigit() or int(text) < 50:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames >= 50, got {text!r}")
    return int(text)


class LiveShadow:
    """A ShadowRunner on the agent's live inputs: a ShadowRun observes each of them for the run's duration.

    `inputs` is the agent's list, which grows when the endpoint starts after the agent; with none
    (no --source, no --http) the verdict is `skipped` at once: there is nothing to compare on.
    """

    def __init__(self, inputs: list[LiveInputs], latency_budget_ms: float | None) -> None:
        self.inputs, self.budget = inputs, latency_budget_ms

    def __call__(self, session: ModelSession, manifest: Manifest, gate: ShadowGate,
                 cancel: threading.Event) -> ShadowReport:
        inputs = list(self.inputs)
        if not inputs:
            return skipped(gate, "no live inputs on this agent (`serve` without --source or --http)")
        run = ShadowRun(session, manifest, gate, self.budget, cancel)
        for source in inputs:
            source.add_observer(run.observe)
        try:
            return run.run()
        finally:
            for source in inputs:
                source.remove_observer(run.observe)
