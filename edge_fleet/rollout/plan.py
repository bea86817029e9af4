"""`plan_rollout`: resolve NAME:VERSION and the target devices, split them into stages, store a
pending rollout. The running fleet server's RolloutDriver picks it up from the registry."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import FleetUsageError, NoTargets, RolloutConflict, UnknownBundle
from ..registry import Registry
from ..registry.records import BundleRecord, DeviceRecord, RolloutRecord, RolloutStatus, RolloutTarget, TargetStatus
from .desired import source_for
from .stages import DEFAULT_STAGE_TIMEOUT, DEFAULT_STAGES, assign_stages, parse_target, split_stages

log = logging.getLogger(__name__)


@dataclass
class RolloutPlan:
    """What plan_rollout decided (also stored in the registry)."""

    id: str
    targets: list[tuple[str, int, str]]  # device, stage, bundle sha
    skipped: list[tuple[str, str]]  # device, reason


def select_targets(wanted: Sequence[str], known: Mapping[str, DeviceRecord], bundles: Mapping[str, BundleRecord],
                   busy: Mapping[str, str]) -> tuple[list[tuple[str, BundleRecord]], list[tuple[str, str]]]:
    """(eligible (device, bundle for its profile), skipped (device, reason)) in `wanted` order.

    Unknown devices and devices whose profile has no bundle are skipped with a reason; a device
    in another active rollout refuses the whole plan (RolloutConflict).
    """
    eligible: list[tuple[str, BundleRecord]] = []
    skipped: list[tuple[str, str]] = []
    for dev_id in wanted:
        dev = known.get(dev_id)
        if dev is None or not dev.profile:
            skipped.append((dev_id, "unknown device: it has never reported its profile"))
        elif dev.profile not in bundles:
            skipped.append((dev_id, f"profile {dev.profile} does not match the bundle's profile "
                                    f"({', '.join(sorted(bundles))})"))
        elif dev_id in busy:
            raise RolloutConflict(f"device {dev_id} is already in running rollout {busy[dev_id]}; wait for it first")
        else:
            eligible.append((dev_id, bundles[dev.profile]))
    return eligible, skipped


def skipped_summary(skipped: Sequence[tuple[str, str]], shown: int = 5) -> str:
    """The skipped devices by reason, a few names each: one line even for a group of thousands that never
    reported (it listed every device, and echoed a 20 MB device id whole)."""
    by_reason: dict[str, list[str]] = {}
    for dev, reason in skipped:
        by_reason.setdefault(reason, []).append(dev if len(dev) <= 64 else dev[:61] + "...")
    return "; ".join(", ".join(devs[:shown]) + (f" and {len(devs) - shown} more" if len(devs) > shown else "")
                     + f": {reason}" for reason, devs in by_reason.items())


def _wanted(reg: Registry, devices: list[str] | None, group: str | None) -> tuple[list[str], dict[str, DeviceRecord]]:
    """The device ids asked for (in order, without duplicates) and what the registry knows of them."""
    if (devices is None) == (group is None):
        raise FleetUsageError("choose the targets with exactly one of --devices or --group")
    if devices is not None:
        wanted = list(dict.fromkeys(d.strip() for d in devices if d.strip()))
        known = {d.id: d for d in reg.devices()}
    else:
        known = {d.id: d for d in reg.devices(group)}
        wanted = sorted(known)
    if not wanted:
        raise NoTargets(f"no devices selected (group {group!r} is empty)" if group else "no devices given")
    return wanted, known


def plan_rollout(reg: Registry, target: str, devices: list[str] | None = None, group: str | None = None,
                 stages: list[float] | None = None, max_failures: float = 0,
                 stage_timeout: float = DEFAULT_STAGE_TIMEOUT, source_url: str | None = None,
                 stage_soak: float = 0.0, created_by: str | None = None,
                 shadow: dict[str, Any] | None = None) -> RolloutPlan:
    """Create a pending rollout of NAME:VERSION to `devices` or to every device of `group`.

    Devices whose profile has no bundle of that name and version are skipped (with a reason); the
    rest are split into cumulative stages (default 5 %, 25 %, 100 %; at least one device per stage).
    stage_soak: seconds a stage's devices must stay on the new bundle before the next stage starts
    (and before the rollout succeeds), so a device whose agent undoes the update (probation) still halts it.
    shadow: the shadow gate (desired.shadow_gate) every device runs before it switches; a device whose new model
    disagrees reports failed (shadow_failed), which counts against max_failures like any failure.
    """
    if not 0 <= stage_soak < math.inf:  # `not`: NaN too (SQLite stores it as NULL; inf never lets a stage end)
        raise FleetUsageError(f"--stage-soak must be a finite number of seconds >= 0, got {stage_soak}")
    if not 0 < stage_timeout < math.inf:  # <= 0 times every device out at once; NaN/inf never time one out
        raise FleetUsageError(f"--stage-timeout must be a finite number of seconds > 0, got {stage_timeout}")
    if shadow and not shadow["timeout_s"] < stage_timeout:
        raise FleetUsageError(f"--shadow-timeout ({shadow['timeout_s']:g}s) must be shorter than --stage-timeout "
                         f"({stage_timeout:g}s): a device waiting for live frames would time out first")
    name, version = parse_target(target)
    bundles = {b.profile: b for b in reg.bundles_named(name, version)}
    if not bundles:
        raise UnknownBundle(f"{name}:{version} is not published: run `edge-fleet publish BUNDLE` first")
    wanted, known = _wanted(reg, devices, group)
    eligible, skipped = select_targets(wanted, known, bundles, reg.busy_devices(wanted))
    if not eligible:
        raise NoTargets(f"no selected device can take {name}:{version}: {skipped_summary(skipped)}")
    for _, b in eligible:
        source_for(b, source_url)  # refuse a bad template now, not mid-rollout
    counts = split_stages(len(eligible), stages or list(DEFAULT_STAGES))
    rid = f"r-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    now = time.time()
    targets = [(d, stage, b.sha256) for (d, b), stage in assign_stages(eligible, counts)]
    rows = [RolloutTarget(rid, d, stage, sha, None, TargetStatus.WAITING) for d, stage, sha in targets]
    rows += [RolloutTarget(rid, d, -1, None, None, TargetStatus.SKIPPED, reason) for d, reason in skipped]
    reg.create_rollout(RolloutRecord(
        id=rid, name=name, version=version, status=RolloutStatus.PENDING, stages=tuple(counts), stage=-1,
        stage_started_at=None, max_failures=max_failures, stage_timeout=stage_timeout, reason=None, created_at=now,
        updated_at=now, source_url=source_url, stage_soak=stage_soak, devices=tuple(rows), created_by=created_by,
        shadow=shadow))
    log.info("planned rollout %s of %s:%d to %d devices in stages %s (%d skipped)",
             rid, name, version, len(targets), counts, len(skipped))
    return RolloutPlan(rid, targets, skipped)
