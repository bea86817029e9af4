"""Which slot the agent serves: the active one at boot (falling back to the other good slot if it
is broken), the new one after a switch, and whatever `edge-agent rollback`/`install` made active
while the daemon runs.
"""

from __future__ import annotations

import logging
import time

from ...runtimes import ModelSession
from ..job import UpdateJob
from ..live import InferenceLoop, LiveModel
from ..model_check import HealthCheckFailed, load_checked
from ..phases import Event, Phase
from ..protocol import DesiredState
from ..slots import Health, SlotInfo, Slots
from .current_job import CurrentJob

log = logging.getLogger(__name__)


class SlotServing:
    """Loads a slot's model into the inference loop (one swap, no dropped inference)."""

    def __init__(self, slots: Slots, loop: InferenceLoop, threads: int | None) -> None:
        self.slots, self.loop, self.threads = slots, loop, threads

    def load(self, info: SlotInfo) -> ModelSession:
        """The slot's model, loaded and health-checked (HealthCheckFailed otherwise)."""
        session, _ = load_checked(info.bundle_dir, info.manifest, None, self.threads)  # type: ignore[arg-type]
        return session

    def serve(self, info: SlotInfo, session: ModelSession | None) -> None:
        """Make the slot's model the live one (loading it first if `session` is None)."""
        if session is None:
            session = self.load(info)
        live = LiveModel.from_slot(info.name, info.ref, info.manifest, session, info.bundle_dir)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        self.loop.swap(live)
        log.info("serving %s v%s from slot %s (swap %.1f ms)", info.ref.name if info.ref else "?",
                 info.ref.version if info.ref else "?", info.name, (time.perf_counter() - t0) * 1000)

    def boot(self, jobs: CurrentJob, profile: str) -> None:
        """Serve the active slot; if it is missing or broken, fall back to the other good slot."""
        active = self.slots.active()
        if active is None:
            log.warning("no model installed yet: waiting for an update (or `edge-agent install`)")
            return
        for info in (active, self.slots.info(self.slots.other(active.name))):
            if not info.usable:
                continue
            try:
                session = self.load(info)
            except HealthCheckFailed as exc:
                log.error("slot %s does not work: %s", info.name, exc)
                self.slots.mark_health(info.name, Health.BAD, reason=f"boot: {exc}")
                continue
            if info.name != active.name:
                self._fall_back(active.name, info, jobs, profile)
            self.serve(info, session)
            return
        log.error("no installed slot works: waiting for an update")

    def _fall_back(self, broken: str, info: SlotInfo, jobs: CurrentJob, profile: str) -> None:
        self.slots.switch(info.name)
        log.warning("active slot %s was broken: rolled back to slot %s", broken, info.name)
        if jobs.phase.is_unfinished:  # the resumed job finishes (or fails) on its own
            return
        if jobs.job is None:
            jobs.job = UpdateJob.for_desired(_placeholder_desired(info, profile), phase=Phase.IDLE)
        jobs.end(Event.BOOT_FALLBACK, f"slot {broken} failed to boot")

    def follow_outside_switch(self, jobs: CurrentJob) -> None:
        """Serve the active slot if someone else (`edge-agent rollback`/`install`) switched it."""
        active = self.slots.active()
        live = self.loop.current
        if active is None or (live is not None and live.slot == active.name):
            return
        log.info("active slot changed outside the daemon: now %s", active.name)
        try:
            self.serve(active, None)
        except HealthCheckFailed as exc:
            log.error("cannot serve slot %s: %s", active.name, exc)
            return
        jobs.reload()


def _placeholder_desired(info: SlotInfo, profile: str) -> DesiredState:
    assert info.ref is not None
    return DesiredState(deployment_id="local", bundle=info.ref, size=1, profile=profile, signature={})
