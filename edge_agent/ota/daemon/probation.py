"""Probation: the model an update just switched to is watched on live inputs for a while, and
switched back to the previous slot if it fails there (which its self-test did not cover)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..live import InferenceLoop
from ..model_check import HealthCheckFailed
from ..phases import Event, Phase
from ..slots import Health, SlotInfo, Slots
from .boot import SlotServing
from .current_job import CurrentJob

log = logging.getLogger(__name__)

# A model on probation is rolled back once at least PROBATION_MIN_ERRORS of its inferences failed and they are more
# than PROBATION_MAX_ERROR_RATE of its inferences: a single bad frame does not undo an update, a model that
# fails on real inputs does.
PROBATION_MIN_ERRORS = 3
PROBATION_MAX_ERROR_RATE = 0.2


@dataclass
class Probation:
    """The model an update just switched to, watched on live inputs until `until` (monotonic seconds)."""

    generation: int
    deployment_id: str | None
    slot: str
    previous_slot: str
    started: float
    until: float


class ProbationWatch:
    """Starts a probation on each switch; `check()` (main thread) ends it: passed, or rolled back."""

    def __init__(self, seconds: float, loop: InferenceLoop, slots: Slots, serving: SlotServing, jobs: CurrentJob,
                 busy: threading.Lock) -> None:
        self.seconds, self.loop, self.slots, self.serving, self.jobs = seconds, loop, slots, serving, jobs
        self.busy = busy  # held while an update runs: it replaces the model on probation anyway
        self.current: Probation | None = None

    def start(self, info: SlotInfo) -> None:
        """Called right after the live model became `info`'s."""
        live = self.loop.current
        if self.seconds <= 0 or live is None:
            return
        now = time.monotonic()
        job = self.jobs.job
        self.current = Probation(live.generation, job.deployment_id if job else None, info.name,
                                 self.slots.other(info.name), now, now + self.seconds)

    def check(self) -> None:
        """Roll back an update whose model fails on live inputs during its probation window."""
        p = self.current
        if p is None:
            return
        live = self.loop.current
        if live is None or live.generation != p.generation:  # replaced since (a newer update, a CLI rollback)
            self.current = None
            return
        ok, errors = self.loop.counts(p.generation)
        if errors >= PROBATION_MIN_ERRORS and errors > PROBATION_MAX_ERROR_RATE * (ok + errors):
            if not self.busy.acquire(blocking=False):
                return
            try:
                self._roll_back(p, ok, errors)
            finally:
                self.busy.release()
        elif time.monotonic() >= p.until:
            log.info("model in slot %s passed probation: %d inferences, %d errors", p.slot, ok, errors)
            self.current = None

    def _roll_back(self, p: Probation, ok: int, errors: int) -> None:
        self.current = None
        why = (f"rolled back after the switch: {errors} of {ok + errors} inferences on live inputs failed within "
               f"{time.monotonic() - p.started:.0f}s (last: {self.loop.last_error})")
        prev = self.slots.info(p.previous_slot)
        if not prev.usable:
            log.error("%s; but the previous slot %s is not usable: keeping the new model", why, p.previous_slot)
            return
        try:
            session = self.serving.load(prev)
        except HealthCheckFailed as exc:
            log.error("%s; but the previous slot %s fails its health check (%s): keeping the new model", why,
                      p.previous_slot, exc)
            return
        self.slots.switch(prev.name)
        self.slots.mark_health(p.slot, Health.BAD, reason=why)
        self.serving.serve(prev, session)
        log.error("%s: serving slot %s again", why, prev.name)
        job = self.jobs.job
        if job is not None and job.deployment_id == p.deployment_id and job.phase is Phase.SUCCEEDED:
            self.jobs.end(Event.LIVE_FAILURE, why, error_kind="probation")
        else:
            self.jobs.report()
