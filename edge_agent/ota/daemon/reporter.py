"""What the agent tells the fleet: its retained reported state and periodic telemetry."""

from __future__ import annotations

from ... import __version__
from ..live import InferenceLoop
from ..protocol import ReportedState, Telemetry, dumps
from ..slots import Slots
from .config import AgentConfig
from .current_job import CurrentJob
from .mqtt_link import MqttLink


class Reporter:
    """Builds ReportedState/Telemetry from the slots, the current job and the inference loop."""

    def __init__(self, config: AgentConfig, link: MqttLink, slots: Slots, jobs: CurrentJob, loop: InferenceLoop,
                 feed=None) -> None:  # noqa: ANN001 - a pipeline.live_feed.LiveFeed (optional extra)
        self.config, self.link, self.slots, self.jobs, self.loop, self.feed = config, link, slots, jobs, loop, feed

    def reported_state(self) -> ReportedState:
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
        )

    def publish_reported(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.link.topics.reported, dumps(self.reported_state()), retain=True)

    def telemetry(self) -> Telemetry:
        live, feed = self.loop.current, self.feed
        extra = {"slot": live.slot if live else None, "phase": self.jobs.phase.value,
                 "ignored_messages": self.link.ignored_messages, "last_inference_error": self.loop.last_error}
        if feed is not None:
            extra.update(source=self.config.source, frames=feed.frames, dropped_frames=feed.dropped)
        return Telemetry(model=live.ref if live else None, inferences=self.loop.inferences, errors=self.loop.errors,
                         latency=self.loop.latency.summary(), extra=extra)

    def publish_telemetry(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.link.topics.telemetry, dumps(self.telemetry()))
