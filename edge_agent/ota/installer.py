"""The install state machine (Mender-style): each state is a small object that does one
thing and names the next state; the job is persisted before every state runs, so a power
cut or `kill -9` resumes at a known state.

    downloading -> verifying -> installing -> health_check -> switching -> succeeded
         any failure -> failed (previous model still active, target slot marked bad)

The job lives in `<home>/ota/update.json` (atomic writes). Every state is safe to run again
from the start: download resumes from its bitmap, verify re-reads the staged file, install
re-unpacks the inactive slot, the health check re-loads it, and the switch checks whether
the active slot already is the target.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..bundle import (
    BundleError, InsufficientSpace, ProfileMismatch, SignatureError, TrustStore, check_free_space, sha256_file,
    verify_bundle,
)
from ..bundle.errors import HashMismatch
from ..home import AgentHome
from ..runtimes import ModelSession
from .model_check import HealthCheckFailed, load_checked
from .protocol import BundleRef, DesiredState, ProtocolError
from .slots import SlotInfo, Slots
from .statefile import read_json, write_json_atomic
from .testhooks import pause_point
from .transfer import TransferCancelled, TransferError, discard_staging

log = logging.getLogger(__name__)

ACTIVE_PHASES = ("downloading", "verifying", "installing", "health_check", "switching")
TERMINAL_PHASES = ("idle", "succeeded", "failed", "rolled_back")


class UpdateRefused(RuntimeError):
    """The update is not allowed (downgrade, wrong profile, untrusted signer, no space...)."""

    exit_code = 52
    kind = "refused"


class DowngradeRefused(UpdateRefused):
    exit_code = 53
    kind = "downgrade"


@dataclass
class UpdateJob:
    """One update attempt, as persisted in update.json."""

    deployment_id: str
    desired: dict[str, Any]  # DesiredState as a dict
    origin: str = "mqtt"  # mqtt | http | file
    phase: str = "downloading"
    target_slot: str | None = None
    staged: str | None = None  # the downloaded/copied bundle file
    side_loaded_from: str | None = None
    last_error: str | None = None
    error_kind: str | None = None
    exit_code: int | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    progress: float = 0.0

    @property
    def desired_state(self) -> DesiredState:
        d = dict(self.desired)
        d["bundle"] = BundleRef(**d["bundle"]) if isinstance(d["bundle"], dict) else d["bundle"]
        return DesiredState(**d)

    @property
    def ref(self) -> BundleRef:
        return self.desired_state.bundle

    @classmethod
    def for_desired(cls, desired: DesiredState, origin: str | None = None, side_loaded_from: str | None = None) -> "UpdateJob":
        return cls(deployment_id=desired.deployment_id, desired=asdict(desired),
                   origin=origin or desired.source.get("type", "mqtt"), side_loaded_from=side_loaded_from)


def job_file(home: AgentHome) -> Path:
    return home.ota_dir / "update.json"


def staging_dir(home: AgentHome) -> Path:
    return home.ota_dir / "staging"


def load_job(home: AgentHome) -> UpdateJob | None:
    """The persisted job (any phase), or None."""
    data = read_json(job_file(home), None)
    if not isinstance(data, dict):
        return None
    try:
        job = UpdateJob(**{k: v for k, v in data.items() if k in UpdateJob.__dataclass_fields__})
        job.desired_state  # validate
        return job
    except (TypeError, KeyError, ProtocolError) as exc:
        log.warning("ignoring unreadable update job: %s", exc)
        return None


def save_job(home: AgentHome, job: UpdateJob) -> None:
    job.updated_at = time.time()
    data = asdict(job)
    data.pop("progress", None)
    write_json_atomic(job_file(home), data)


@dataclass
class InstallContext:
    """Everything the states need. `fetch` downloads; `on_switch` swaps the live model."""

    home: AgentHome
    trust: TrustStore
    profile_name: str
    latency_budget_ms: float | None
    job: UpdateJob
    fetch: Callable[["InstallContext"], Path]
    on_switch: Callable[[SlotInfo, ModelSession | None], None] | None = None
    report: Callable[[UpdateJob], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    threads: int | None = None
    session: ModelSession | None = None  # loaded and health-checked in health_check

    @property
    def slots(self) -> Slots:
        return Slots(self.home.slots_dir)


# --- checks shared by states ---------------------------------------------------------------


def check_not_downgrade(slots: Slots, name: str, version: int, sha256: str, allow_downgrade: bool) -> None:
    """Refuse a lower version of the installed model (same name) unless explicitly allowed."""
    active = slots.active()
    if active is None or active.ref is None or active.ref.name != name:
        return
    if version < active.ref.version and not allow_downgrade:
        raise DowngradeRefused(
            f"refusing downgrade of {name} from v{active.ref.version} to v{version} (the fleet must mark it a rollback)"
        )
    if version == active.ref.version and sha256 != active.ref.sha256 and not allow_downgrade:
        raise DowngradeRefused(f"{name} v{version} is already installed with different content: bump the version")


def precheck_desired(ctx: InstallContext, desired: DesiredState) -> None:
    """Refuse before downloading what can be refused from the desired state alone."""
    if desired.profile != ctx.profile_name:
        raise ProfileMismatch(f"deployment is for profile '{desired.profile}' but this device is '{ctx.profile_name}'")
    kid = desired.signature.get("key_id") if isinstance(desired.signature, dict) else None
    if ctx.job.origin != "file" and kid not in ctx.trust.keys:  # a side-loaded file is checked in verifying
        raise SignatureError(f"bundle is signed by key {kid!r}, which this device does not trust")
    check_not_downgrade(ctx.slots, desired.bundle.name, desired.bundle.version, desired.bundle.sha256,
                        desired.allow_downgrade)


# --- the states -----------------------------------------------------------------------------


class State:
    """One step of the update. `run` does the work and returns the next phase's name."""

    name = ""

    def run(self, ctx: InstallContext) -> str:
        raise NotImplementedError


class Downloading(State):
    """Fetch the bundle file into staging (MQTT blocks, HTTP with Range, or a side-loaded copy)."""

    name = "downloading"

    def run(self, ctx: InstallContext) -> str:
        desired = ctx.job.desired_state
        precheck_desired(ctx, desired)
        check_free_space(staging_dir(ctx.home), desired.size, "download the bundle")
        ctx.job.staged = str(ctx.fetch(ctx))
        return "verifying"


def copy_side_loaded(ctx: InstallContext) -> Path:
    """`fetch` for `edge-agent install FILE`: copy the file into staging (so a restart can resume)."""
    source = Path(ctx.job.side_loaded_from or "")
    if not source.is_file():
        raise TransferError(f"{source} does not exist or is not a file")
    dest = staging_dir(ctx.home) / f"{ctx.job.ref.sha256}.file"
    tmp = dest.with_suffix(".file.partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
    return dest


class Verifying(State):
    """Whole-file hash and size, signature, schema, profile, identity, downgrade, disk space."""

    name = "verifying"

    def run(self, ctx: InstallContext) -> str:
        desired = ctx.job.desired_state
        staged = Path(ctx.job.staged or "")
        if not staged.is_file():
            raise HashMismatch("staged bundle file is missing: it will be downloaded again on the next attempt")
        size, digest = sha256_file(staged)
        if size != desired.size or digest != desired.bundle.sha256:
            discard_staging(staging_dir(ctx.home), desired.bundle.sha256)
            raise HashMismatch(f"downloaded bundle has SHA-256 {digest[:12]}... ({size} B), "
                               f"desired {desired.bundle.sha256[:12]}... ({desired.size} B)")
        vb = verify_bundle(staged, ctx.trust, profile=ctx.profile_name)
        m = vb.manifest
        if (m.name, m.version) != (desired.bundle.name, desired.bundle.version):
            raise UpdateRefused(f"bundle is {m.name} v{m.version} but the deployment announced "
                                f"{desired.bundle.name} v{desired.bundle.version}")
        check_not_downgrade(ctx.slots, m.name, m.version, digest, desired.allow_downgrade)
        check_free_space(ctx.home.slots_dir, m.total_size, "install the bundle")
        return "installing"


class Installing(State):
    """Unpack the verified bundle into the inactive slot."""

    name = "installing"

    def run(self, ctx: InstallContext) -> str:
        slots = ctx.slots
        target = slots.inactive_name()
        ctx.job.target_slot = target
        save_job(ctx.home, ctx.job)
        slots.install(target, Path(ctx.job.staged or ""), ctx.trust, ctx.profile_name, ctx.job.ref)
        return "health_check"


class HealthCheck(State):
    """Load the new slot's model, re-run its recorded self-test, check latency; mark good."""

    name = "health_check"

    def run(self, ctx: InstallContext) -> str:
        slots = ctx.slots
        target = _target(ctx)
        info = slots.info(target)
        if info.manifest is None or info.status not in ("installed", "good"):
            raise HealthCheckFailed(f"slot {target} holds no installed bundle (status {info.status})")
        ctx.session, report = load_checked(info.bundle_dir, info.manifest, ctx.latency_budget_ms, ctx.threads)
        slots.mark(target, "good", reason=None)
        log.info("slot %s healthy: %s", target, report.to_dict())
        return "switching"


class Switching(State):
    """Atomically make the new slot active, then swap the live model reference."""

    name = "switching"

    def run(self, ctx: InstallContext) -> str:
        slots = ctx.slots
        target = _target(ctx)
        info = slots.info(target)
        if info.status != "good":
            raise HealthCheckFailed(f"slot {target} is not marked good (status {info.status})")
        if ctx.session is None and ctx.on_switch is not None:  # resumed after a restart: load again
            ctx.session, _ = load_checked(info.bundle_dir, info.manifest, ctx.latency_budget_ms, ctx.threads)  # type: ignore[arg-type]
        slots.switch(target)
        if ctx.on_switch is not None:
            ctx.on_switch(slots.info(target), ctx.session)
            ctx.session = None  # now owned by whoever runs inference
        return "succeeded"


STATES: dict[str, State] = {s.name: s for s in (Downloading(), Verifying(), Installing(), HealthCheck(), Switching())}


def _target(ctx: InstallContext) -> str:
    if ctx.job.target_slot is None:
        raise HealthCheckFailed("update job has no target slot")
    return ctx.job.target_slot


# --- the runner -----------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def run_update(ctx: InstallContext) -> UpdateJob:
    """Run (or resume) ctx.job to a terminal phase; never raises for update failures."""
    job = ctx.job
    while job.phase in ACTIVE_PHASES:
        save_job(ctx.home, job)
        _report(ctx)
        pause_point(job.phase, ctx.home.ota_dir)
        state = STATES[job.phase]
        try:
            if ctx.cancel.is_set():
                raise TransferCancelled("update abandoned: a newer deployment arrived")
            job.phase = state.run(ctx)
        except Exception as exc:  # noqa: BLE001 - every failure ends the job cleanly
            _fail(ctx, state.name, exc)
    if job.phase == "succeeded":
        job.last_error = job.error_kind = job.exit_code = None
        discard_staging(staging_dir(ctx.home), job.ref.sha256)
        log.info("update %s succeeded: %s v%s active in slot %s", job.deployment_id, job.ref.name,
                 job.ref.version, job.target_slot)
    save_job(ctx.home, job)
    _report(ctx)
    return job


def _fail(ctx: InstallContext, phase: str, exc: BaseException) -> None:
    job = ctx.job
    job.last_error = f"{phase}: {one_line(exc)}"
    job.error_kind = getattr(exc, "kind", exc.__class__.__name__)
    job.exit_code = getattr(exc, "exit_code", None) or 1
    log.warning("update %s failed in %s: %s", job.deployment_id, phase, one_line(exc))
    log.debug("failure detail", exc_info=exc)
    if ctx.session is not None:
        ctx.session.close()
        ctx.session = None
    slots = ctx.slots
    target = job.target_slot
    job.phase = "failed"
    if target and phase in ("installing", "health_check", "switching"):
        if slots.active_name() == target:  # the switch happened but the swap failed: go back
            prev = slots.previous()
            if prev is not None:
                slots.switch(prev.name)
                job.phase = "rolled_back"
                if ctx.on_switch is not None:
                    try:
                        ctx.on_switch(slots.info(prev.name), None)
                    except Exception as exc2:  # noqa: BLE001
                        log.error("could not reload the previous model: %s", one_line(exc2))
        if slots.active_name() != target:
            slots.mark(target, "bad", reason=job.last_error)
    if isinstance(exc, (TransferCancelled,)):
        return
    if isinstance(exc, (BundleError,)) and not isinstance(exc, InsufficientSpace):
        # a bad file will not get better: do not keep it around
        discard_staging(staging_dir(ctx.home), job.ref.sha256)


def _report(ctx: InstallContext) -> None:
    if ctx.report is not None:
        try:
            ctx.report(ctx.job)
        except Exception as exc:  # noqa: BLE001 - reporting never breaks an update
            log.warning("could not report state: %s", one_line(exc))


def abandon(home: AgentHome, job: UpdateJob, reason: str) -> UpdateJob:
    """End an unfinished job without running it (e.g. superseded while the agent was down)."""
    job.phase = "failed"
    job.last_error = reason
    job.error_kind = "abandoned"
    slots = Slots(home.slots_dir)
    if job.target_slot and slots.active_name() != job.target_slot and slots.info(job.target_slot).status != "empty":
        slots.mark(job.target_slot, "bad", reason=reason)
    save_job(home, job)
    return job
