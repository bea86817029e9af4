"""RolloutDriver: moves active rollouts forward from what devices reported.

Called a few times per second by the fleet server. Each step reads the rollout, observes each
target (observe.py), and applies the events through the transition tables (states.py):

* a stage starts by publishing a retained DesiredState to each of its devices;
* a device succeeds when it reports the target bundle as current (phase succeeded/idle),
  fails when it reports failed/rolled_back for this deployment, or times out after
  `stage_timeout` seconds (a timeout counts as a failure); a device that succeeded and later
  reports rolled_back for this deployment (the agent's probation) counts as failed then;
* the next stage starts only when every device of the stage finished (and, with `stage_soak`,
  has stayed on the new bundle that long) and the failures of the whole rollout are within
  the threshold;
* when failures exceed the threshold the rollout HALTS: devices that had switched get their
  previous bundle as desired state with allow_downgrade=True, in-flight and failed devices
  get their previous bundle back as desired state too (so nothing switches later), and the
  remaining stages are never started. The rollout stays `halting` until every switched device
  reports its previous bundle again (`rolled_back`), reports that it could not
  (`rollback_failed`), or stays silent for `stage_timeout` (`rollback_timeout`); then `halted`.

Operators' requests (registry column `request`, written by the API or the CLI) are applied
after the step: halt pauses a running rollout (PAUSED: devices in flight finish and are still
watched, so too many failures still halt it, but no new stage starts), resume continues it,
rollback halts it at once as above; a succeeded rollout can be rolled back too.

A device that comes online (again) while its update is in flight or its roll-back is awaited gets
its desired state once more (`_resend_if_reconnected`): on a clustered broker whose retained
messages stay on the node they were published to (ejabberd), a device that reconnects to another
node would otherwise never see it. The resent message is the same one (same deployment id and
issued_at), so an agent that already has it drops it. The driver remembers, per device in flight, up to
when its announcements are covered by a publish; that record is dropped when the device leaves flight
(succeeded, failed, rolled back, ...) and when its rollout ends, so it holds at most the devices in flight.

All state lives in the registry, so a restarted server continues a rollout where it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Iterable

from edge_agent.ota.protocol import Topics, dumps

from ..registry import Registry
from ..registry.records import ACTIVE_ROLLOUT, DeviceRecord, RolloutRecord, RolloutTarget
from ..registry.records import RolloutStatus as R
from ..registry.records import TargetStatus as T
from .desired import desired_for
from .signed_urls import UrlSigner
from .observe import (FINISHING_EVENTS, Observed, decide, halt_outcome, needs_revert, observe_rolling_back,
                      observe_sent, observe_succeeded)
from .states import (ACTION_FROM, Action, RolloutEvent, TargetEvent, allowed_from, next_rollout_status,
                     next_target_status)

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


class RolloutDriver:
    """Moves pending/running/halting rollouts forward; `publish(topic, payload, retain)` sends MQTT."""

    def __init__(self, reg: Registry, topics: Topics, publish: Publish, signer: UrlSigner | None = None) -> None:
        self.reg, self.topics, self.publish = reg, topics, publish
        self.signer = signer  # signs HTTP download URLs per device (signed_urls.py)
        # (rollout, device) in flight -> the time up to which its online announcements are covered by a publish
        self._covered: dict[tuple[str, str], float] = {}

    @property
    def resend_records(self) -> int:
        """How many devices the resend bookkeeping holds (at most those in flight in active rollouts)."""
        return len(self._covered)

    def step(self, now: float | None = None) -> None:
        """One pass over all active rollouts, then the operators' requests (cheap; call a few times per second)."""
        requested = {r.id for r in self.reg.requested_rollouts()}
        active = self.reg.rollouts(ACTIVE_ROLLOUT)
        # a halt or roll-back of a rollout that has not started is applied before it starts: the first stage used
        # to be sent first, so `halt` on a rollout deployed by mistake still updated its first devices
        if not_started := [r.id for r in active if r.status == R.PENDING and r.id in requested]:
            self._apply_requests(not_started, now)
            active = self.reg.rollouts(ACTIVE_ROLLOUT)
        ids = {r.id for r in active}  # a rollout that ended (here or on the server that drove it before) is forgotten
        self._covered = {key: at for key, at in self._covered.items() if key[0] in ids}
        for r in active:
            try:
                self._step(r, time.time() if now is None else now)
            except Exception:  # noqa: BLE001 - a broken rollout must not stop the others
                log.exception("rollout %s: step failed", r.id)
        self._apply_requests(requested, now)

    def _apply_requests(self, rollout_ids: Iterable[str], now: float | None) -> None:
        for rid in rollout_ids:
            try:
                self._apply_request(rid, time.time() if now is None else now)
            except Exception:  # noqa: BLE001
                log.exception("rollout %s: applying the operator's request failed", rid)

    def _apply_request(self, rollout_id: str, now: float) -> None:
        """Halt (pause), resume or roll back, as an operator asked through the API or the CLI.
        The request is cleared only after its effect is stored: whoever waits for it sees the result."""
        r = self.reg.rollout(rollout_id)
        if r is None or r.request is None:
            return
        request, by = r.request, r.request_by or "an operator"
        action = Action(request) if request in {a.value for a in Action} else None
        refused = (f"unknown request {request!r}" if action is None else None if r.status in ACTION_FROM[action]
                   else f"rollout {r.id} became {r.status} before the server applied it ({action} is possible "
                        f"from {allowed_from(action)})")
        try:
            if refused is not None:  # kept with the rollout: the waiting API call or CLI answers 409 / exit 64
                log.warning("rollout %s: %s request from %s not applied: %s", r.id, request, by, refused)
            elif action == Action.HALT:
                self._advance(r, RolloutEvent.OPERATOR_HALT, now, reason=f"halted by {by}")
                log.warning("rollout %s halted by %s: no new stage starts until resumed", r.id, by)
            elif action == Action.RESUME:
                self._advance(r, RolloutEvent.OPERATOR_RESUME, now, reason=f"resumed by {by}")
                log.info("rollout %s resumed by %s", r.id, by)
            else:
                self._halt(r, f"rolled back by {by}", now)
        except Exception as exc:
            refused = f"the server failed applying it ({type(exc).__name__}; see its log)"
            raise
        finally:
            self.reg.clear_request(r.id, request, refused)

    # -- writing through the transition tables ----------------------------------------------

    def _apply(self, r: RolloutRecord, t: RolloutTarget, seen: Observed, now: float, *,
               previous_sha: str | None = None, sent_at: float | None = None) -> None:
        status = next_target_status(t.status, seen.event)
        if status not in (T.SENT, T.ROLLING_BACK):  # out of flight: no resend for it any more
            self._covered.pop((r.id, t.device_id), None)
        self.reg.update_target(r.id, t.device_id, status, seen.reason, previous_sha=previous_sha, sent_at=sent_at,
                               done_at=now if seen.event in FINISHING_EVENTS else None, shadow=seen.shadow)

    def _advance(self, r: RolloutRecord, event: RolloutEvent, now: float, reason: str | None = None,
                 stage: int | None = None) -> None:
        status = next_rollout_status(r.status, event)
        self.reg.update_rollout(r.id, now, status=status, reason=reason, stage=stage,
                                stage_started_at=now if stage is not None else None)

    # -- one step -----------------------------------------------------------------------------

    def _step(self, r: RolloutRecord, now: float) -> None:
        if r.status == R.HALTING:
            self._settle_rollbacks(r, now)
            return
        if r.status == R.PENDING:
            self._start_stage(r, 0, RolloutEvent.STARTED, now)
            r = self.reg.rollout(r.id) or r
        elif any(t.stage == r.stage and t.status == T.WAITING for t in r.devices):
            log.warning("rollout %s: finishing the start of stage %d (its driver stopped halfway)", r.id, r.stage + 1)
            self._send_stage(r, r.stage, now)
            r = self.reg.rollout(r.id) or r
        watched = [t for t in r.targets if (t.stage == r.stage and t.status == T.SENT) or t.status == T.SUCCEEDED]
        devices = self.reg.devices_by_id(t.device_id for t in watched)  # one query, not one per device
        for t in watched:
            device = devices.get(t.device_id) or DeviceRecord(id=t.device_id)
            if t.status == T.SENT:
                seen = observe_sent(r, t, device, now)
                if seen is None and self._reconnected(r, t, device):
                    self._resend(r, t, now)
            else:
                seen = observe_succeeded(r, device)
            if seen is not None:
                self._apply(r, t, seen, now)
        r = self.reg.rollout(r.id) or r
        decision = decide(r, now)
        if decision is None or (r.status == R.PAUSED and decision.event != RolloutEvent.HALTED):
            return  # paused: only a halt for too many failures moves it; the rest waits for resume
        if decision.event == RolloutEvent.HALTED:
            self._halt(r, decision.reason or "halted", now)
        elif decision.event == RolloutEvent.NEXT_STAGE:
            self._start_stage(r, r.stage + 1, RolloutEvent.NEXT_STAGE, now)
        else:
            self._advance(r, decision.event, now, reason=decision.reason)
            log.info("rollout %s succeeded", r.id)

    def _start_stage(self, r: RolloutRecord, stage: int, event: RolloutEvent, now: float) -> None:
        """Publish the desired state to each waiting device of `stage`."""
        self._advance(r, event, now, stage=stage)
        log.info("rollout %s: starting stage %d/%d", r.id, stage + 1, len(r.stages))
        self._send_stage(r, stage, now)

    def _send_stage(self, r: RolloutRecord, stage: int, now: float) -> None:
        """Send each still-waiting device of `stage` its desired state. A driver that died halfway
        (kill -9) left some waiting: the next driver sends those, and only those."""
        waiting = [t for t in r.devices if t.stage == stage and t.status == T.WAITING]
        devices = self.reg.devices_by_id(t.device_id for t in waiting)
        bundles = {sha: self.reg.bundle_by_sha(sha) for sha in {t.bundle_sha for t in waiting if t.bundle_sha}}
        for t in waiting:
            current = devices[t.device_id].current_sha if t.device_id in devices else None
            bundle = bundles.get(t.bundle_sha) if t.bundle_sha else None
            if bundle is None:
                self._apply(r, t, Observed(TargetEvent.BUNDLE_MISSING, "bundle was removed from the registry"), now)
            elif current == bundle.sha256:
                self._apply(r, t, Observed(TargetEvent.ALREADY_CURRENT, "already running this bundle"), now,
                            previous_sha=current, sent_at=now)
            else:
                try:
                    desired = desired_for(bundle, r.id, url_template=r.source_url, device_id=t.device_id,
                                          signer=self.signer, now=now, lifetime=r.stage_timeout,
                                          shadow=r.shadow)
                except OSError as exc:  # the stored file is gone: its block hashes cannot be computed
                    self._apply(r, t, Observed(TargetEvent.BUNDLE_MISSING, f"bundle file unreadable: {exc}"), now)
                    continue
                desired = replace(desired, issued_at=now)  # a resend (_resend) repeats it exactly
                self.publish(self.topics.desired(t.device_id), dumps(desired), True)
                self._apply(r, t, Observed(TargetEvent.SENT), now, previous_sha=current, sent_at=now)

    def _reconnected(self, r: RolloutRecord, t: RolloutTarget, device: DeviceRecord) -> bool:
        """The device announced itself online after its desired state was sent (or last resent, or its
        roll-back sent), so it may have missed it on another node. A new driver after a failover does not
        know the resends of the one before and resends once more: harmless."""
        at = device.presence_at
        covered = max(t.sent_at or 0.0, self._covered.get((r.id, t.device_id), 0.0))
        if device.presence != "online" or at is None or at <= covered:
            return False
        self._covered[(r.id, t.device_id)] = at
        return True

    def _resend(self, r: RolloutRecord, t: RolloutTarget, now: float) -> None:
        """Publish a SENT device's desired state again, as first sent (issued_at = sent_at)."""
        bundle = self.reg.bundle_by_sha(t.bundle_sha) if t.bundle_sha else None
        if bundle is None:
            return  # removed meanwhile: the device times out
        try:
            desired = desired_for(bundle, r.id, url_template=r.source_url, device_id=t.device_id, signer=self.signer,
                                  now=now, lifetime=r.stage_timeout, shadow=r.shadow)
        except OSError:
            return
        log.info("rollout %s: %s came online again; resending its desired state", r.id, t.device_id)
        self.publish(self.topics.desired(t.device_id), dumps(replace(desired, issued_at=t.sent_at or now)), True)

    def _halt(self, r: RolloutRecord, reason: str, now: float) -> None:
        log.warning("rollout %s HALTED: %s; rolling back", r.id, reason)
        confirm = False
        for t in r.targets:
            if t.status == T.WAITING:
                self._apply(r, t, Observed(TargetEvent.HALT_NOT_STARTED, "rollout halted before this stage"), now)
            elif needs_revert(t):
                note, sent = self._revert(r.id, t)
                self._covered[(r.id, t.device_id)] = now  # announcements before this are answered by the revert
                seen = halt_outcome(t, note, sent)
                confirm |= seen.event == TargetEvent.HALT_REVERT_SENT
                self._apply(r, t, seen, now)
        event = RolloutEvent.HALTED_AWAIT_ROLLBACKS if confirm else RolloutEvent.HALTED
        self._advance(r, event, now, reason=reason)

    def _settle_rollbacks(self, r: RolloutRecord, now: float) -> None:
        """Halting rollout: `halted` once every switched device confirmed, failed or timed out its roll-back."""
        pending = 0
        rolling = [t for t in r.devices if t.status == T.ROLLING_BACK]
        devices = self.reg.devices_by_id(t.device_id for t in rolling)
        for t in rolling:
            device = devices.get(t.device_id) or DeviceRecord(id=t.device_id)
            seen = observe_rolling_back(r, t, device, now)
            if seen is None:
                pending += 1
                if self._reconnected(r, t, device):
                    self._revert(r.id, t)
            else:
                self._apply(r, t, seen, now)
        if not pending:
            self._advance(r, RolloutEvent.ROLLBACKS_SETTLED, now)
            log.warning("rollout %s halted; roll-backs settled", r.id)

    def _revert(self, rid: str, t: RolloutTarget) -> tuple[str, bool]:
        """Publish the device's previous bundle as its desired state (allow_downgrade); (note, whether sent)."""
        topic = self.topics.desired(t.device_id)
        prev = self.reg.bundle_by_sha(t.previous_sha) if t.previous_sha else None
        if prev is not None:
            try:  # the block hashes come from the stored file: one deleted from the store made every halt fail
                desired = desired_for(prev, f"{rid}-rollback", allow_downgrade=True)
            except OSError as exc:
                return (f"previous bundle {prev.name}:{prev.version} file unreadable ({exc.strerror or exc}): "
                        "cannot roll back", False)
            self.publish(topic, dumps(desired), True)
            return f"desired reset to previous {prev.name}:{prev.version}", True
        if t.previous_sha is None:
            self.publish(topic, b"", True)  # no model before: clear the retained desired state
            return "desired state cleared (device had no model before)", True
        return f"previous bundle {t.previous_sha[:12]} is not in the registry: cannot roll back", False
