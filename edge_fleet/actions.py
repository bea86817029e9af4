"""What changes the fleet, once, for every front end: the local CLI, the management API and
(through the API) the console and a remote CLI. Each action checks the actor's role, does the
work through the registry and the rollout planner, and writes one audit row saying who did
what to which object and how it ended ("ok" or the refusal).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from edge_agent.bundle import BundleError, TrustStore
from edge_agent.ota.protocol import ProtocolError, check_device_id

from .access import Actor, create_token, revoke_token
from .broker.logins import LOGINS_NAME, BrokerLogins
from .errors import AccessDenied, ActionRefused, FleetError, FleetUsageError, NotFound
from .publish import publish_bundle
from .registry import Registry
from .registry.records import BundleRecord, DeviceRecord, RolloutRecord, RolloutStatus, TargetStatus, TokenRecord
from .rollout import DEFAULT_STAGE_TIMEOUT, DEFAULT_STAGES, plan_rollout
from .rollout.states import ACTION_FROM, Action, allowed_from

V = TypeVar("V")


def require(reg: Registry, actor: Actor, needed: str, action: str, target: str | None,
            detail: dict[str, Any] | None = None) -> None:
    """AccessDenied (audited) unless `actor` has the `needed` role."""
    if not actor.may(needed):
        reg.add_audit(actor.name, actor.role, action, target, detail or {}, f"denied: needs {needed}")
        raise AccessDenied(f"{action} needs the {needed} role; token {actor.name!r} is {actor.role}")


def audited(reg: Registry, actor: Actor, needed: str, action: str, target: str | None, detail: dict[str, Any],
            work: Callable[[], V], describe: Callable[[V], tuple[str, dict[str, Any]]] | None = None) -> V:
    """Run `work` if `actor` has the `needed` role, and audit the outcome either way. `describe`
    names what was done once it is known (e.g. the NAME:VERSION a published file turned out to be)."""
    require(reg, actor, needed, action, target, detail)
    try:
        result = work()
    except (FleetError, BundleError) as exc:
        reg.add_audit(actor.name, actor.role, action, target, detail, f"refused: {exc}")
        raise
    if describe is not None:
        target, detail = describe(result)
    reg.add_audit(actor.name, actor.role, action, target, detail, "ok")
    return result


def publish(reg: Registry, actor: Actor, path: Path, trust: TrustStore | None, shown_name: str | None = None) -> BundleRecord:
    """Verify and store a bundle (edge_fleet.publish: the same checks whoever uploads it). The audit
    row names the file when refused and NAME:VERSION (profile, SHA-256) when published."""
    shown = shown_name or path.name

    def work() -> BundleRecord:
        if trust is None:
            raise FleetUsageError("the fleet has no trusted keys: put *.pub files in HOME/trusted or start serve --trust")
        return publish_bundle(reg, path, trust)

    return audited(reg, actor, "admin", "publish", shown, {"file": shown}, work,
                   lambda rec: (f"{rec.name}:{rec.version}", {"file": shown, "profile": rec.profile,
                                                              "sha256": rec.sha256, "signer": rec.key_id}))


def deploy(reg: Registry, actor: Actor, target: str, devices: list[str] | None = None, group: str | None = None,
           stages: list[float] | None = None, max_failures: float = 0.0,
           stage_timeout: float = DEFAULT_STAGE_TIMEOUT, stage_soak: float = 0.0,
           source_url: str | None = None, shadow: dict[str, Any] | None = None) -> RolloutRecord:
    """Plan a staged rollout (the running server drives it); `shadow`: rollout.shadow_gate(...) or None."""
    detail = {"devices": devices, "group": group, "stages": stages, "max_failures": max_failures, "shadow": shadow}

    def work() -> RolloutRecord:
        plan = plan_rollout(reg, target, devices=devices, group=group, stages=stages or list(DEFAULT_STAGES),
                            max_failures=max_failures, stage_timeout=stage_timeout, source_url=source_url,
                            stage_soak=stage_soak, created_by=actor.name, shadow=shadow)
        r = reg.rollout(plan.id)
        assert r is not None
        return r

    return audited(reg, actor, "operator", "deploy", target, detail, work)


ACTION_POLL_S = 0.05  # how often a caller waiting for the server to apply its request looks


def request_action(reg: Registry, actor: Actor, rollout_id: str, action: str, wait: float = 5.0) -> RolloutRecord:
    """Ask the server to halt, resume or roll back a rollout; wait up to `wait` s until it applied it.
    ActionRefused (409, exit 64) when the rollout's status does not allow it now, or when it changed before the
    server applied the request (a resumed rollout that halted itself meanwhile): the operator must not read
    the rollout's new status as the effect of the request. (The API waits without a thread: routes_rollouts.)"""
    submit_action(reg, actor, rollout_id, action)
    deadline = time.monotonic() + wait
    while not (outcome := action_outcome(reg, actor, rollout_id, action))[0] and time.monotonic() < deadline:
        time.sleep(ACTION_POLL_S)
    return outcome[1]


def submit_action(reg: Registry, actor: Actor, rollout_id: str, action: str) -> None:
    """Store an operator's request on the rollout (audited), or refuse it at once (ActionRefused, NotFound)."""
    def work() -> RolloutRecord:
        try:
            act = Action(action)
        except ValueError:
            raise FleetUsageError(f"unknown action {action!r} (one of {', '.join(a.value for a in Action)})") from None
        r = rollout_or_404(reg, rollout_id)
        if r.status not in ACTION_FROM[act]:
            raise ActionRefused(f"cannot {act.value} rollout {r.id}: it is {r.status} (possible from {allowed_from(act)})",
                                status=r.status)
        if act == Action.ROLLBACK and r.status == RolloutStatus.SUCCEEDED:
            _check_still_current(reg, r)
        reg.request_rollout(r.id, act.value, actor.name)
        return r

    audited(reg, actor, "operator", action, rollout_id, {}, work)


def action_outcome(reg: Registry, actor: Actor, rollout_id: str, action: str) -> tuple[bool, RolloutRecord]:
    """(whether the server has taken the request up, the rollout now); ActionRefused when it did not apply it."""
    r = rollout_or_404(reg, rollout_id)
    if r.request is not None:
        return False, r
    if r.request_refused is not None:
        reg.add_audit(actor.name, actor.role, action, rollout_id, {}, f"not applied: {r.request_refused}")
        raise ActionRefused(f"{action} not applied: {r.request_refused}", status=r.status)
    return True, r


def _check_still_current(reg: Registry, r: RolloutRecord) -> None:
    """A finished rollout may be rolled back only while its devices still run what it installed."""
    busy = reg.busy_devices(t.device_id for t in r.targets)
    if busy:
        dev, other = next(iter(busy.items()))
        raise ActionRefused(f"cannot roll back {r.id}: device {dev} is in rollout {other} now")
    for t in r.targets:
        if t.status == TargetStatus.SUCCEEDED and t.previous_sha != t.bundle_sha:
            dev = reg.device(t.device_id)
            if dev is None or dev.current_sha != t.bundle_sha:
                raise ActionRefused(f"cannot roll back {r.id}: device {t.device_id} no longer runs "
                                    f"{r.name}:{r.version}")


def set_group(reg: Registry, actor: Actor, device_id: str, group: str | None) -> DeviceRecord:
    """Put a device in a group (or none); a device not seen yet is created, to be grouped before it reports."""
    def work() -> DeviceRecord:
        try:
            check_device_id(device_id)
        except ProtocolError as exc:
            raise FleetUsageError(str(exc)) from None
        if group is not None and not (0 < len(group) <= 64 and group.isprintable()):
            raise FleetUsageError(f"a group name must be 1-64 printable characters, got {group!r}")
        reg.set_group(device_id, group)
        dev = reg.device(device_id)
        assert dev is not None
        return dev

    return audited(reg, actor, "operator", "group", device_id, {"group": group}, work)


def new_token(reg: Registry, actor: Actor, name: str, role: str) -> tuple[str, TokenRecord]:
    return audited(reg, actor, "admin", "token-create", name, {"role": role},
                   lambda: create_token(reg, actor, name, role))


def drop_token(reg: Registry, actor: Actor, name: str) -> None:
    audited(reg, actor, "admin", "token-revoke", name, {}, lambda: revoke_token(reg, name))


def rotate_login(reg: Registry, actor: Actor, broker_dir: Path, device_id: str) -> tuple[BrokerLogins, str]:
    """A new broker password for a device that has a login (a leaked one): (the logins, the new password)."""
    def work() -> tuple[BrokerLogins, str]:
        logins = _device_logins(broker_dir, device_id)
        return logins, logins.rotate(device_id)

    return audited(reg, actor, "admin", "login-rotate", device_id, {}, work)


def revoke_login(reg: Registry, actor: Actor, broker_dir: Path, device_id: str) -> BrokerLogins:
    """Take a device's broker login away (a stolen or retired device); its registry row and history stay."""
    def work() -> BrokerLogins:
        logins = _device_logins(broker_dir, device_id)
        logins.revoke(device_id)
        return logins

    return audited(reg, actor, "admin", "login-revoke", device_id, {}, work)


def _device_logins(broker_dir: Path, device_id: str) -> BrokerLogins:
    """The broker logins, which hold one for `device_id` (NotFound otherwise, saying if it was revoked)."""
    try:
        check_device_id(device_id)
    except ProtocolError as exc:
        raise FleetUsageError(str(exc)) from None
    if not (broker_dir / LOGINS_NAME).is_file():  # a refused change must not create the fleet's logins
        raise NotFound(f"device {device_id!r} has no broker login (no logins in {broker_dir})")
    logins, _ = BrokerLogins.load_or_create(broker_dir)
    if device_id not in logins.devices:
        when = logins.revoked.get(device_id)
        said = f" (revoked {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))} UTC)" if when else ""
        raise NotFound(f"device {device_id!r} has no broker login{said}: create one with `edge-fleet devices login "
                       f"{device_id}`")
    return logins


def rollout_or_404(reg: Registry, rollout_id: str) -> RolloutRecord:
    r = reg.rollout(rollout_id)
    if r is None:
        raise NotFound(f"no rollout {rollout_id!r}")
    return r
