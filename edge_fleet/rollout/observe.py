"""From what devices reported to events: pure decisions the driver applies.

Each function reads records (a rollout, one of its targets, the device as last reported) and
the time, and names the event with its reason; none writes or publishes. The driver
(driver.py) does the I/O and looks the next status up in states.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..registry.records import DeviceRecord, RolloutRecord, RolloutTarget
from ..registry.records import TargetStatus as T
from .stages import failure_threshold
from .states import COUNTS_AS_FAILURE, STAGE_FINISHED, RolloutEvent, TargetEvent

E = TargetEvent

# Events after which a device is done for its stage: the driver stamps done_at.
FINISHING_EVENTS = frozenset({E.ALREADY_CURRENT, E.BUNDLE_MISSING, E.REPORTED_SUCCESS, E.REPORTED_FAILURE,
                              E.TIMED_OUT, E.UNDONE, E.HALT_CANCELLED, E.HALT_REVERT_DONE,
                              E.HALT_REVERT_IMPOSSIBLE, E.ROLLBACK_CONFIRMED, E.ROLLBACK_REPORTED_FAILURE})


@dataclass(frozen=True)
class Observed:
    """An event for one target, and the reason to store with it (None clears the reason)."""

    event: TargetEvent
    reason: str | None = None
    shadow: dict[str, Any] | None = None  # the device's shadow report for this rollout, kept with the target


def shadow_of(r: RolloutRecord, dev: DeviceRecord) -> dict[str, Any] | None:
    """The device's shadow report if it belongs to this rollout (a later deployment's is not ours)."""
    s = dev.shadow
    return s if isinstance(s, dict) and s.get("deployment_id") == r.id else None


def observe_sent(r: RolloutRecord, t: RolloutTarget, dev: DeviceRecord, now: float) -> Observed | None:
    """A device whose update is in flight: success, failure, timeout, or nothing yet."""
    phase = dev.phase
    shadow = shadow_of(r, dev)
    if dev.current_sha == t.bundle_sha and phase in ("succeeded", "idle"):
        return Observed(E.REPORTED_SUCCESS, shadow=shadow)
    if dev.deployment_id == r.id and phase in ("failed", "rolled_back"):
        # a shadow run that failed is a failed device: the rollout halts at this stage (max_failures)
        return Observed(E.REPORTED_FAILURE, dev.last_error or f"device reported {phase}", shadow=shadow)
    if now - (t.sent_at or now) > r.stage_timeout:
        return Observed(E.TIMED_OUT, f"no success within {r.stage_timeout:.0f}s (last phase: {phase or 'none'})")
    return None


def observe_succeeded(r: RolloutRecord, dev: DeviceRecord) -> Observed | None:
    """A device that succeeded may undo the update later (agent probation: the model failed on live inputs)."""
    if dev.deployment_id == r.id and dev.phase == "rolled_back":
        return Observed(E.UNDONE, f"device rolled back after the switch: {dev.last_error or 'no reason given'}")
    return None


def observe_rolling_back(r: RolloutRecord, t: RolloutTarget, dev: DeviceRecord, now: float) -> Observed | None:
    """Halting rollout: a switched device is rolled back when it reports its previous bundle as current,
    failed when it reports the roll-back failed, timed out after stage_timeout from the halt."""
    phase = dev.phase
    if dev.current_sha == t.previous_sha and phase in ("succeeded", "idle", "rolled_back"):
        return Observed(E.ROLLBACK_CONFIRMED, f"{t.reason}; confirmed by the device")
    if dev.deployment_id == f"{r.id}-rollback" and phase == "failed":
        return Observed(E.ROLLBACK_REPORTED_FAILURE,
                        f"device could not go back: {dev.last_error or 'no reason given'}")
    # While halting, the rollout row is not touched until every roll-back settled: updated_at = halt time.
    if now - r.updated_at > r.stage_timeout:
        return Observed(E.TIMED_OUT, f"{t.reason}, but the device did not report it within {r.stage_timeout:.0f}s "
                                     f"(last phase: {phase or 'none'}, presence: {dev.presence or 'unknown'})")
    return None


def needs_revert(t: RolloutTarget) -> bool:
    """On halt: devices that switched, are switching, or failed get their previous bundle back as desired
    state, so nothing switches later."""
    return switched(t) or t.status in (T.SENT, T.FAILED, T.TIMEOUT)


def switched(t: RolloutTarget) -> bool:
    return t.status == T.SUCCEEDED and t.previous_sha != t.bundle_sha


def halt_outcome(t: RolloutTarget, note: str, revert_sent: bool) -> Observed:
    """The event for a target on halt, once its revert was attempted (`note` says what was sent)."""
    if switched(t):
        if revert_sent and t.previous_sha:  # rolled_back once the device reports its previous bundle
            return Observed(E.HALT_REVERT_SENT, note)
        if revert_sent:  # it had no model before: there is no previous bundle to report
            return Observed(E.HALT_REVERT_DONE, note)
        return Observed(E.HALT_REVERT_IMPOSSIBLE, note)
    if t.status == T.SENT:
        return Observed(E.HALT_CANCELLED, note)
    return Observed(E.HALT_NOTED, f"{t.reason}; {note}")


@dataclass(frozen=True)
class Decision:
    """What the rollout does next: HALTED, NEXT_STAGE or COMPLETED, with the reason to store."""

    event: RolloutEvent
    reason: str | None = None


def decide(r: RolloutRecord, now: float) -> Decision | None:
    """After the targets were observed: halt, start the next stage, complete, or wait (None)."""
    targets = r.targets
    failures = sum(t.status in COUNTS_AS_FAILURE for t in targets)
    threshold = failure_threshold(r.max_failures, len(targets))
    if failures > threshold:
        return Decision(RolloutEvent.HALTED, f"{failures} device(s) failed, more than the allowed {threshold}")
    soak = r.stage_soak or 0.0
    if not all(t.status in STAGE_FINISHED and (t.status != T.SUCCEEDED or now - (t.done_at or now) >= soak)
               for t in targets if t.stage == r.stage):
        return None
    if r.stage + 1 < len(r.stages):
        return Decision(RolloutEvent.NEXT_STAGE)
    ok = sum(t.status == T.SUCCEEDED for t in targets)
    return Decision(RolloutEvent.COMPLETED, f"{ok}/{len(targets)} devices on {r.name}:{r.version}"
                                            + (f", {failures} failed" if failures else ""))
