"""What the agent tells the fleet: its retained reported state and periodic telemetry."""

from __future__ import annotations

import time
from typing import Any

from ... import __version__
from ...monitor.watch import DriftWatch
from ..live import InferenceLoop
from ..protocol import ReportedState, Telemetry, dumps
from ..report_order import ReportSequence
from ..slots import Slots
from .config import AgentConfig
from .current_job import CurrentJob
from .mqtt_link import MqttLink


class Reporter:
    """Builds ReportedState/Telemetry from the slots, the current job and the inference loop."""

    def __init__(self, config: AgentConfig, link: MqttLink, slots: Slots, jobs: CurrentJob, loop: InferenceLoop,
                 feed=None, drift: DriftWatch | None = None) -> None:  # noqa: ANN001 - feed: a LiveFeed (optional)
        self.config, self.link, self.slots, self.jobs, self.loop, self.feed = config, link, slots, jobs, loop, feed
        self.drift = drift
        self._drift_state: str | None = None  # the drift state last published in the reported state
        self._drift_published: dict[str, Any] | None = None  # ...its figures, and when (time.monotonic)
        self._drift_at = 0.0
        self.sequence = ReportSequence()  # numbers the reported states: the fleet orders them by it, not by our clock

    def drift_summary(self) -> dict[str, Any] | None:
        """The drift state for the reported state: state, worst feature and its PSI, window (None: no frames)."""
        snap = self.drift.snapshot() if self.drift is not None else None
        if snap is None:
            return None
        worst = snap.psi.get(snap.worst) if snap.worst else None
        return {"state": snap.state, "worst": snap.worst, "psi": worst, "frames": snap.frames, "window": snap.window,
                "threshold": snap.threshold, "model": snap.model}

    def reported_state(self) -> ReportedState:
        """The state now, numbered next in this agent start's series."""
        active, prev, job = self.slots.active(), self.slots.previous(), self.jobs.job
        return ReportedState(
            device_id=self.config.device_id,
            phase=self.jobs.phase.value,
            profile=self.config.profile_name,
            agent_version=__version__,
            current=active.ref if active else None,
            previous=prev.ref if prev else None,
            deployment_id=job.deployment_id if job else None,
            target=job.ref if job else None,
            progress=round(job.progress, 4) if job else 0.0,
            last_error=job.last_error if job else None,
            shadow=job.shadow if job else None,
            drift=self.drift_summary(),
            boot_id=self.sequence.boot_id,
            seq=self.sequence.next(),
        )

    def publish_reported(self) -> None:
        if self.link.connected.is_set():
            with self.sequence.lock:  # two threads reporting at once publish in the order they numbered
                state = self.reported_state()
                self._drift_state = state.drift["state"] if state.drift else None
                self._drift_published, self._drift_at = state.drift, time.monotonic()
                self.link.publish(self.link.topics.reported, dumps(state), retain=True)

    def publish_if_drift_changed(self) -> None:
        """A drift state change (warming_up, ok, drift) is part of the retained reported state: publish it at once;
        new figures of the same state (frames while warming up, the worst PSI) at most once a telemetry interval.
        Published on state changes only, the fleet's DRIFT column kept the first figures of a state: `warming_up
        1/200` until the window was full, `ok (... PSI 0.04)` while the PSI crept to 0.24."""
        summary = self.drift_summary()
        if summary is None:
            return
        if summary["state"] != self._drift_state or (
                _figures(summary) != _figures(self._drift_published)
                and time.monotonic() - self._drift_at >= self.config.telemetry_interval_s):
            self.publish_reported()

    def telemetry(self) -> Telemetry:
        live, feed = self.loop.current, self.feed
        extra = {"slot": live.slot if live else None, "phase": self.jobs.phase.value,
                 "ignored_messages": self.link.ignored_messages, "last_inference_error": self.loop.last_error}
        if feed is not None:
            extra.update(source=self.config.source, frames=feed.frames, dropped_frames=feed.dropped)
        snap = self.drift.snapshot() if self.drift is not None else None
        if snap is not None:
            extra["drift"] = snap.to_dict()
        return Telemetry(model=live.ref if live else None, inferences=self.loop.inferences, errors=self.loop.errors,
                         latency=self.loop.latency.summary(), extra=extra)

    def publish_telemetry(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.link.topics.telemetry, dumps(self.telemetry()))


def _figures(drift: dict[str, Any] | None) -> tuple | None:
    """What of a drift summary is worth a new reported state: a PSI moving in its third decimal is not."""
    if drift is None:
        return None
    psi = drift.get("psi")
    return (drift.get("state"), drift.get("worst"), round(psi, 2) if isinstance(psi, float) else psi,
            drift.get("frames"), drift.get("model"))
