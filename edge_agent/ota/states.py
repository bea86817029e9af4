"""One small `State` per phase of an update; `run` does the phase's work and returns an `Event`.

Where an event leads is not decided here: the runner looks it up in `phases.TRANSITIONS`.
A state that raises reports `Event.FAILURE` (the runner records the typed error). Every state
is safe to run again from its start after a power cut: the download resumes from its bitmap,
verify re-reads the staged file, install re-unpacks the inactive slot, the health check
re-loads it, the switch checks whether the active slot already is the target, and the
failure-handling states look at the slots before they change anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from device_profiles import Limits

from ..bundle import Manifest, ProfileMismatch, SignatureError, TrustStore, check_free_space, verify_bundle
from ..bundle.errors import HashMismatch
from ..home import AgentHome
from ..monitor.shadow import ShadowFailed, ShadowReport, skipped
from ..runtimes import ModelSession
from .job import UpdateJob, one_line, save_job
from .model_check import HealthCheckFailed, load_checked
from .phases import Event, Phase
from .protocol import DesiredState, ShadowGate
from .slots import Health, Lifecycle, SlotInfo, Slots
from .damage import DAMAGE, damage_event, signature_doc
from .transfer import MAX_WINDOW, TransferCancelled, TransferError, discard_staging
from ..errors import AgentError

log = logging.getLogger(__name__)

# How an agent runs a shadow: (new model's session, its manifest, the gate, cancel) -> report. The daemon's
# runs on its live frames (daemon.shadowing); without one (side-loaded installs) a gated update is skipped.
ShadowRunner = Callable[[ModelSession, Manifest, ShadowGate, threading.Event], ShadowReport]


class UpdateRefused(AgentError, RuntimeError):
    """The update is not allowed (downgrade, wrong profile, untrusted signer, no space...)."""

    code_name = "refused"
    kind = "refused"


class UpdateInProgress(UpdateRefused):
    """Another update holds this agent home (the daemon's worker or another `edge-agent install`)."""

    code_name = "busy"
    kind = "busy"


class DowngradeRefused(UpdateRefused):
    code_name = "downgrade"
    kind = "downgrade"


def staging_dir(home: AgentHome) -> Path:
    return home.ota_dir / "staging"


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
    shadow: ShadowRunner | None = None  # runs the shadowing phase on live inputs (None: no live inputs here)
    profile_limits: Limits | None = None  # the device's loaded profile's limits (None: the built-in profile_name's)

    @property
    def slots(self) -> Slots:
        return Slots(self.home.slots_dir, self.trust)


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


@dataclass(frozen=True)
class DownloadBudget:
    """What one download may cost this device, from its profile: the largest bundle, and the memory
    blocks in flight may take (a message announcing more is refused, never allocated)."""

    max_bundle_bytes: int
    memory_bytes: int

    def window(self, block_size: int) -> int:
        """Blocks in flight at once: a quarter of the memory budget, 1..MAX_WINDOW."""
        return max(1, min(MAX_WINDOW, self.memory_bytes // 4 // max(1, block_size)))


def download_budget(profile_name: str, limits: Limits | None = None) -> DownloadBudget | None:
    """The profile's limits (None when the profile cannot be loaded: the protocol limits still hold).

    `limits` are those of the profile the agent loaded: a user's profile FILE is known here only by the
    name inside it, which loads no file (or the built-in of that name, with the built-in's limits)."""
    from device_profiles import ProfileError, load_profile

    if limits is None:
        try:
            limits = load_profile(profile_name).limits
        except (ProfileError, OSError, ValueError):
            return None
    return DownloadBudget(int(limits.max_bundle_mb * 2**20), int(limits.memory_budget_mb * 2**20))


def precheck_desired(ctx: InstallContext, desired: DesiredState) -> None:
    """Refuse before downloading what can be refused from the desired state alone."""
    if desired.profile != ctx.profile_name:
        raise ProfileMismatch(f"deployment is for profile '{desired.profile}' but this device is '{ctx.profile_name}'")
    budget = download_budget(ctx.profile_name, ctx.profile_limits)
    if budget is not None and desired.size > budget.max_bundle_bytes:
        raise UpdateRefused(f"the deployment announces a {desired.size}-byte bundle, over this profile's "
                            f"max_bundle_mb ({budget.max_bundle_bytes / 2**20:.3g} MiB)")
    kid = desired.signature.get("key_id") if isinstance(desired.signature, dict) else None
    if ctx.job.origin != "file" and kid not in ctx.trust.keys:  # a side-loaded file is checked in verifying
        raise SignatureError(f"bundle is signed by key {kid!r}, which this device does not trust")
    check_not_downgrade(ctx.slots, desired.bundle.name, desired.bundle.version, desired.bundle.sha256,
                        desired.allow_downgrade)


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


def _target_info(ctx: InstallContext) -> SlotInfo:
    """The slot the job installs into (chosen in installing)."""
    if ctx.job.target_slot is None:
        raise HealthCheckFailed("update job has no target slot")
    return ctx.slots.info(ctx.job.target_slot)


# --- the states -----------------------------------------------------------------------------


class State:
    """One phase of the update: `run` does its work and says what happened."""

    phase: ClassVar[Phase]

    def run(self, ctx: InstallContext) -> Event:
        raise NotImplementedError


class Downloading(State):
    """Fetch the bundle file into staging (MQTT blocks, HTTP with Range, or a side-loaded copy)."""

    phase = Phase.DOWNLOADING

    def run(self, ctx: InstallContext) -> Event:
        desired = ctx.job.desired_state
        precheck_desired(ctx, desired)
        if not ctx.job.check_blocks:  # a re-check keeps the file it has
            check_free_space(staging_dir(ctx.home), desired.size, "download the bundle")
        ctx.job.staged = str(ctx.fetch(ctx))
        ctx.job.check_blocks = False
        return Event.DONE


class Verifying(State):
    """Size, signature, schema, profile, identity (the deployment's signed manifest), downgrade, disk space.

    No payload is hashed here: installing hashes every member against the signed manifest as it unpacks,
    and that one pass stands for the file's SHA-256 too (the signature.json must be the deployment's, so
    the manifest, which lists every member's SHA-256, is the one the fleet announced)."""

    phase = Phase.VERIFYING

    def run(self, ctx: InstallContext) -> Event:
        desired = ctx.job.desired_state
        staged = Path(ctx.job.staged or "")
        if not staged.is_file():
            raise HashMismatch("staged bundle file is missing: it will be downloaded again on the next attempt")
        size = staged.stat().st_size
        if size != desired.size:
            discard_staging(staging_dir(ctx.home), desired.bundle.sha256)
            raise HashMismatch(f"downloaded bundle is {size} B, the deployment's {desired.size} B")
        try:
            vb = verify_bundle(staged, ctx.trust, profile=ctx.profile_name, read_members=False)
            if desired.signature and signature_doc(vb.signature_bytes) != desired.signature:
                raise HashMismatch("the downloaded bundle's signature.json is not the deployment's: "
                                   "it is not the bundle the fleet announced")
        except DAMAGE as exc:
            return damage_event(ctx.job, exc)
        m = vb.manifest
        if (m.name, m.version) != (desired.bundle.name, desired.bundle.version):
            raise UpdateRefused(f"bundle is {m.name} v{m.version} but the deployment announced "
                                f"{desired.bundle.name} v{desired.bundle.version}")
        check_not_downgrade(ctx.slots, m.name, m.version, desired.bundle.sha256, desired.allow_downgrade)
        check_free_space(ctx.home.slots_dir, m.total_size, "install the bundle")
        return Event.DONE


class Installing(State):
    """Unpack the bundle into the inactive slot, hashing every member against the signed manifest: the one
    SHA-256 pass over the bundle on the device. A damaged download goes back to have its blocks re-checked."""

    phase = Phase.INSTALLING

    def run(self, ctx: InstallContext) -> Event:
        slots = ctx.slots
        target = slots.inactive_name()
        ctx.job.target_slot = target
        save_job(ctx.home, ctx.job)
        try:
            slots.install(target, Path(ctx.job.staged or ""), ctx.trust, ctx.profile_name, ctx.job.ref)
        except DAMAGE as exc:
            return damage_event(ctx.job, exc)
        return Event.DONE


class HealthCheck(State):
    """Load the new slot's model, re-run its recorded self-test, check latency; mark good."""

    phase = Phase.HEALTH_CHECK

    def run(self, ctx: InstallContext) -> Event:
        info = _target_info(ctx)
        if info.manifest is None or info.lifecycle is not Lifecycle.INSTALLED or info.health is Health.BAD:
            raise HealthCheckFailed(f"slot {info.name} holds no installed bundle ({info.lifecycle}, health {info.health})")
        ctx.session, report = load_checked(info.bundle_dir, info.manifest, ctx.latency_budget_ms, ctx.threads)
        ctx.slots.mark_health(info.name, Health.GOOD, reason=None)
        log.info("slot %s healthy: %s", info.name, report.to_dict())
        return Event.DONE


class Shadowing(State):
    """With a shadow gate: the new model answers live frames beside the active one; below the gate's
    agreement it is never switched to (ShadowFailed -> aborting: slot marked bad, old model active)."""

    phase = Phase.SHADOWING

    def run(self, ctx: InstallContext) -> Event:
        gate = ctx.job.desired_state.shadow
        if gate is None:
            return Event.DONE
        info = _target_info(ctx)
        if ctx.shadow is None:
            report = skipped(gate, "no live inputs on this agent (a side-loaded install)")
        else:
            if ctx.session is None:  # resumed after a restart: load again
                ctx.session, _ = load_checked(info.bundle_dir, info.manifest, ctx.latency_budget_ms, ctx.threads)  # type: ignore[arg-type]
            report = ctx.shadow(ctx.session, info.manifest, gate, ctx.cancel)  # type: ignore[arg-type]
        report.deployment_id = ctx.job.deployment_id
        ctx.job.shadow = report.to_dict()
        log.info("update %s: %s", ctx.job.deployment_id, report.line())
        if ctx.cancel.is_set():
            raise TransferCancelled("update abandoned during the shadow run: a newer deployment arrived")
        if report.verdict == "failed":
            raise ShadowFailed(report.line())
        return Event.DONE


class Switching(State):
    """Atomically make the new slot active, then swap the live model reference."""

    phase = Phase.SWITCHING

    def run(self, ctx: InstallContext) -> Event:
        info = _target_info(ctx)
        if info.health is not Health.GOOD:
            raise HealthCheckFailed(f"slot {info.name} is not marked good (health {info.health})")
        if ctx.session is None and ctx.on_switch is not None:  # resumed after a restart: load again
            ctx.session, _ = load_checked(info.bundle_dir, info.manifest, ctx.latency_budget_ms, ctx.threads)  # type: ignore[arg-type]
        ctx.slots.switch(info.name)
        if ctx.on_switch is not None:
            ctx.on_switch(ctx.slots.info(info.name), ctx.session)
            ctx.session = None  # now owned by whoever runs inference
        return Event.DONE


class RollingBack(State):
    """Failure handling after the switch began: if the new slot became active, make the previous one active again."""

    phase = Phase.ROLLING_BACK

    def run(self, ctx: InstallContext) -> Event:
        slots, target = ctx.slots, ctx.job.target_slot
        if target is None or slots.active_name() != target:
            return Event.NOTHING_TO_UNDO
        prev = slots.previous()
        if prev is None:
            log.error("slot %s is active and there is no previous slot to go back to: keeping it", target)
            return Event.FAILURE
        slots.switch(prev.name)
        slots.mark_health(target, Health.BAD, reason=ctx.job.last_error)
        if ctx.on_switch is not None:
            try:
                ctx.on_switch(slots.info(prev.name), None)
            except Exception as exc:  # noqa: BLE001 - the slot switch stands; boot falls back if it must
                log.error("could not reload the previous model: %s", one_line(exc))
        return Event.DONE


class Aborting(State):
    """Failure handling before the new slot became active: mark it bad so it is never booted."""

    phase = Phase.ABORTING

    def run(self, ctx: InstallContext) -> Event:
        slots, target = ctx.slots, ctx.job.target_slot
        info = slots.info(target) if target else None
        # a bundle that failed installing's check never touched the slot: its previous bundle stays usable
        untouched = info is not None and info.lifecycle is Lifecycle.INSTALLED and info.ref != ctx.job.ref
        if info is not None and slots.active_name() != target and info.lifecycle is not Lifecycle.EMPTY and not untouched:
            slots.mark_health(target, Health.BAD, reason=ctx.job.last_error)
        return Event.DONE


STATES: dict[Phase, State] = {s.phase: s for s in (
    Downloading(), Verifying(), Installing(), HealthCheck(), Shadowing(), Switching(), RollingBack(), Aborting())}
