"""Desired states from the fleet: each becomes at most one update job.

A retained desired state is delivered again on every reconnect; one already handled (in any
phase: rolled_back too, so an update that was undone is not installed again) is dropped. A
failed deployment is retried when the fleet publishes it again with a later `issued_at` (same
deployment id). A desired bundle that is already active becomes a `succeeded` job without an install.
"""

from __future__ import annotations

import logging

from ..job import UpdateJob
from ..phases import Event, Phase
from ..protocol import DesiredState, ProtocolError
from ..slots import Slots
from .current_job import CurrentJob
from .mqtt_link import MessageIgnored
from .update_worker import UpdateWorker

log = logging.getLogger(__name__)


class DesiredStateHandler:
    """The `desired` topic's handler (paho's thread): parse, drop repeats, hand new jobs to the worker."""

    def __init__(self, slots: Slots, jobs: CurrentJob, worker: UpdateWorker) -> None:
        self.slots, self.jobs, self.worker = slots, jobs, worker

    def on_payload(self, payload: bytes) -> None:
        if not payload:
            log.info("desired state cleared")
            return
        try:
            desired = DesiredState.parse(payload)
        except ProtocolError as exc:
            raise MessageIgnored(f"desired state: {exc}") from None
        if self._already_handled(desired) or self._already_active(desired):
            return
        self.worker.submit(UpdateJob.for_desired(desired))

    def _already_handled(self, desired: DesiredState) -> bool:
        job = self.jobs.job
        if job is None or job.deployment_id != desired.deployment_id or job.ref.sha256 != desired.bundle.sha256:
            return False
        if job.phase is Phase.IDLE:
            return False
        if job.phase is Phase.FAILED and desired.issued_at > float(job.desired.get("issued_at") or 0.0):
            log.info("deployment %s failed before (%s): the fleet sent it again, retrying", desired.deployment_id,
                     job.last_error)
            return False
        log.info("desired state %s already handled (%s)", desired.deployment_id, job.phase)
        return True

    def _already_active(self, desired: DesiredState) -> bool:
        active = self.slots.active()
        if active is None or active.ref is None or active.ref.sha256 != desired.bundle.sha256:
            return False
        log.info("desired %s v%s is already active", desired.bundle.name, desired.bundle.version)
        job = self.jobs.job
        if job is None or job.deployment_id != desired.deployment_id:
            done = UpdateJob.for_desired(desired)
            done.apply(Event.ALREADY_ACTIVE)
            done.target_slot = active.name
            self.jobs.store(done)
        return True
