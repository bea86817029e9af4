"""The agent's live monitors on its camera/stream frames (`edge-agent serve --source`):

    DriftWatch     one DriftMonitor per served model, against that model's bundle reference
    FeedShadow     a ShadowRunner (ota.states) that shadows the new model on the feed's frames

Both are observers of a pipeline.live_feed.LiveFeed. Inputs of served requests (a device's local
inference API) are not observed yet: the serving layer's observer hook would feed the same two.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from ..bundle import REFERENCE_STATS_FILE, Manifest
from ..ota.protocol import ShadowGate
from ..runtimes import ModelSession
from .drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW, DriftConfig, DriftMonitor, DriftSnapshot
from .reference import ReferenceStats
from .shadow import ShadowReport, ShadowRun

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
    classifier = post is None or post.kind == "classification"
    from ..pipeline.postprocess import served_output

    return DriftMonitor(reference, layout=manifest.inputs[0].layout, softmax=post.softmax if post else True,
                        classifier=classifier, config=config, model=f"{manifest.name}:{manifest.version}",
                        output_index=served_output(manifest) if classifier else 0)


class DriftWatch:
    """Observer: drift of the live frames against the served model's reference (restarts on a swap)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._generation: int | None = None
        self.monitor: DriftMonitor | None = None

    def __call__(self, sample: Any) -> None:
        model = sample.model
        if model.generation != self._generation:
            self.monitor = drift_monitor_for(model.manifest, load_reference(model.bundle_dir), self.config)
            self._generation = model.generation
        assert self.monitor is not None
        self.monitor.observe(next(iter(sample.feeds.values())), sample.outputs)

    def snapshot(self) -> DriftSnapshot | None:
        m = self.monitor
        return m.snapshot() if m is not None else None


def add_drift_arguments(group: Any) -> None:
    """--drift-window and --drift-threshold, for every command that watches live frames."""
    group.add_argument("--drift-window", type=_frames, default=DEFAULT_WINDOW, metavar="FRAMES",
                       help=f"score drift (PSI against the bundle's reference statistics) over the last FRAMES live "
                       f"frames (default {DEFAULT_WINDOW}; docs/monitoring.md)")
    group.add_argument("--drift-threshold", type=float, default=DEFAULT_THRESHOLD, metavar="PSI",
                       help=f"raise the `drift` state when a feature's PSI exceeds this (default {DEFAULT_THRESHOLD}: "
                       "a significant shift)")


def _frames(text: str) -> int:
    """argparse type: a whole number of frames >= 50 (PSI over 10 bins is biased by about 9/frames)."""
    if not text.isdigit() or int(text) < 50:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames >= 50, got {text!r}")
    return int(text)


class FeedShadow:
    """A ShadowRunner on a LiveFeed: attaches a ShadowRun as an observer for the run's duration."""

    def __init__(self, feed: Any, latency_budget_ms: float | None) -> None:
        self.feed, self.budget = feed, latency_budget_ms

    def __call__(self, session: ModelSession, manifest: Manifest, gate: ShadowGate,
                 cancel: threading.Event) -> ShadowReport:
        run = ShadowRun(session, manifest, gate, self.budget, cancel)
        self.feed.add_observer(run.observe)
        try:
            return run.run()
        finally:
            self.feed.remove_observer(run.observe)
