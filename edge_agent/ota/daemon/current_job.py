"""The update job the agent reports: one reference shared by the daemon's parts.

The update worker shows each phase as the runner stores it; the other parts (desired-state
dedup, boot fallback, probation, an outside switch) change a finished job through the
transition table and store it here. Every change is reported (retained `reported` state).
"""

from __future__ import annotations

import logging
from typing import Callable

from ...home import AgentHome
from ..job import UpdateJob, load_job, save_job
from ..phases import Event, Phase

log = logging.getLogger(__name__)


class CurrentJob:
    """The job the agent reports (None before its first update)."""

    def __init__(self, home: AgentHome, on_change: Callable[[], None] | None = None) -> None:
        self.home = home
        self.on_change = on_change
        self.job: UpdateJob | None = load_job(home)

    @property
    def phase(self) -> Phase:
        return self.job.phase if self.job is not None else Phase.IDLE

    def show(self, job: UpdateJob) -> None:
        """The runner stored `job` (the worker made it current when it started it); a job someone else
        replaced meanwhile (a desired bundle already active, arriving as the runner finished) is not
        reported over its successor."""
        if self.job is not None and self.job is not job:
            log.debug("not reporting %s: %s is current", job.deployment_id, self.job.deployment_id)
            return
        self.job = job
        self.report()

    def store(self, job: UpdateJob) -> None:
        """Make `job` the reported one and store it."""
        self.job = job
        save_job(self.home, job)
        self.report()

    def end(self, event: Event, last_error: str | None, error_kind: str | None = None) -> None:
        """Move the finished job through the table on `event` (probation, boot fallback) and store it."""
        job = self.job
        assert job is not None
        job.apply(event)
        job.last_error = last_error
        if error_kind is not None:
            job.error_kind = error_kind
        self.store(job)

    def reload(self) -> None:
        """Read the stored job again (after `edge-agent rollback`/`install` changed it)."""
        self.job = load_job(self.home)
        self.report()

    def report(self) -> None:
        """Publish the current state (also when it did not change, e.g. the served model did)."""
        if self.on_change is not None:
            self.on_change()
