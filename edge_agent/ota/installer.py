"""The install runner (Mender-style): run the current phase's state, look its event up in the table.

    downloading -> verifying -> installing -> health_check -> switching -> succeeded
    a failure before the switch -> aborting -> failed (new slot marked bad, previous model active)
    a failure in the switch     -> rolling_back -> rolled_back (or aborting if nothing switched)

The whole table is `phases.TRANSITIONS` (rendered in docs/ota-state-machine.md). The job is
stored before every phase runs, so a power cut or `kill -9` resumes at a known phase; each
store counts, and a phase stored more often than `phases.store_limit` allows ends the job
(`state loop detected`) instead of crashing into the same phase forever.

Also here: `install_lock`, one update at a time per agent home (daemon or CLI).
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from typing import Iterator

from ..bundle import BundleError, InsufficientSpace
from ..home import AgentHome
from .job import StateLoopDetected, UpdateJob, job_file, load_job, one_line, save_job
from .phases import Event, Phase, store_limit
from .states import STATES, DowngradeRefused, InstallContext, UpdateRefused, copy_side_loaded, staging_dir
from .testhooks import pause_point
from .transfer import TransferCancelled, discard_staging

log = logging.getLogger(__name__)

__all__ = [
    "DowngradeRefused", "InstallContext", "UpdateJob", "UpdateRefused", "abandon", "copy_side_loaded",
    "install_lock", "job_file", "load_job", "one_line", "run_update", "save_job", "staging_dir",
]


@contextmanager
def install_lock(home: AgentHome, wait: bool = True) -> Iterator[None]:
    """One update at a time per agent home (daemon worker or `edge-agent install`/`rollback`)."""
    home.ota_dir.mkdir(parents=True, exist_ok=True)
    with open(home.ota_dir / "install.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UpdateRefused("another update is running on this agent home") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_update(ctx: InstallContext) -> UpdateJob:
    """Run (or resume) ctx.job to a final phase; never raises for update failures (a full disk too)."""
    job = ctx.job
    while job.phase.is_unfinished:
        job.apply(_step(ctx))
    if job.phase is Phase.SUCCEEDED:
        job.clear_failure()
        discard_staging(staging_dir(ctx.home), job.ref.sha256)
        log.info("update %s succeeded: %s v%s active in slot %s", job.deployment_id, job.ref.name,
                 job.ref.version, job.target_slot)
    _store(ctx)
    _report(ctx)
    return job


def _store(ctx: InstallContext) -> bool:
    """Store the job; False (logged) when the disk refuses: the job goes on in memory and is reported."""
    try:
        save_job(ctx.home, ctx.job)
    except OSError as exc:
        log.error("could not store update %s: %s", ctx.job.deployment_id, one_line(exc))
        return False
    return True


def _step(ctx: InstallContext) -> Event:
    """Store the job, then run its phase's state once; the event it ended with."""
    job, phase = ctx.job, ctx.job.phase
    stored = _store(ctx)
    _report(ctx)
    if not stored and phase.is_update_step:  # a step that cannot be resumed must not start
        _failed(ctx, phase, InsufficientSpace("cannot store the update job (disk full?): free space and deploy again"))
        return Event.FAILURE
    limit = store_limit(phase)
    if limit is not None and job.state_stores > limit:
        _failed(ctx, phase, StateLoopDetected(
            f"state loop detected: the job was stored {job.state_stores} times (limit {limit}); "
            "a crash inside this phase on every start?"))
        return Event.STATE_LOOP
    pause_point(phase.value, ctx.home.ota_dir)
    try:
        if ctx.cancel.is_set() and phase.is_update_step:
            raise TransferCancelled("update abandoned: a newer deployment arrived")
        return STATES[phase].run(ctx)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an event of the table
        _failed(ctx, phase, exc)
        return Event.CANCELLED if isinstance(exc, TransferCancelled) else Event.FAILURE


def _failed(ctx: InstallContext, phase: Phase, exc: BaseException) -> None:
    """Record a failure (an update step's or a state loop; one inside failure handling keeps the cause)."""
    job = ctx.job
    log.warning("update %s failed in %s: %s", job.deployment_id, phase, one_line(exc))
    log.debug("failure detail", exc_info=exc)
    if phase.is_update_step or isinstance(exc, StateLoopDetected) or job.last_error is None:
        job.record_failure(phase, exc)
    if ctx.session is not None:
        ctx.session.close()
        ctx.session = None
    bad_file = isinstance(exc, BundleError) and not isinstance(exc, InsufficientSpace)
    if bad_file or isinstance(exc, TransferCancelled) or job.origin == "file":
        # a bad file will not get better, an abandoned download is not resumed, a side-loaded copy is redone
        discard_staging(staging_dir(ctx.home), job.ref.sha256)


def _report(ctx: InstallContext) -> None:
    if ctx.report is not None:
        try:
            ctx.report(ctx.job)
        except Exception as exc:  # noqa: BLE001 - reporting never breaks an update
            log.warning("could not report state: %s", one_line(exc))


def abandon(ctx: InstallContext, reason: str) -> UpdateJob:
    """End an unfinished job without running its update steps (its failure handling still runs)."""
    job = ctx.job
    job.last_error, job.error_kind, job.exit_code = reason, "abandoned", 1
    if job.phase.is_update_step:
        job.apply(Event.CANCELLED)
    return run_update(ctx)
