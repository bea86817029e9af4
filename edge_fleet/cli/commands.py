"""The commands other than serve: each asks a Fleet backend (local or remote) and renders the result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import actions
from ..broker.logins import LOGINS_NAME, BrokerLogins
from ..errors import BrokerStartError, FleetUsageError, RolloutHalted
from ..registry import RolloutStatus
from . import render
from ..views import dumps
from .backend import Fleet, Json, LocalFleet

Result = tuple[Any, str]


def check_deploy_body(body: dict[str, Any]) -> None:
    """The API's own rules for a rollout (api.models.DeployBody), applied before either backend sees it: the local
    one used to take --stage-timeout nan (devices never time out) or -5 (every device times out at once)."""
    from pydantic import ValidationError

    from ..api.models import DeployBody

    try:
        DeployBody.model_validate(body)
    except ValidationError as exc:
        problems = [f"--{'.'.join(str(p) for p in e['loc']).replace('_', '-')} {body.get(str(e['loc'][0]))!r}: "
                    f"{e['msg'].lower()}" if e["loc"] else e["msg"] for e in exc.errors()]
        raise FleetUsageError("; ".join(problems)) from None


def cmd_publish(fleet: Fleet, args: argparse.Namespace) -> Result:
    b = fleet.publish(Path(args.bundle), args.trust)
    return (b, f"published {b['name']}:{b['version']} for {b['profile']} ({b['size']} B, signed by {b['key_id']}) "
               f"sha256={b['sha256']}")


def cmd_bundles(fleet: Fleet, _args: argparse.Namespace) -> Result:
    rows = fleet.bundles()
    return rows, render.bundles_text(rows)


def cmd_deploy(fleet: Fleet, args: argparse.Namespace) -> Result:
    body = {"bundle": args.target, "devices": args.devices.split(",") if args.devices is not None else None,
            "group": args.group, "stages": args.stages, "max_failures": args.max_failures,
            "stage_timeout": args.stage_timeout, "stage_soak": args.stage_soak, "source_url": args.source_url,
            "min_shadow_agreement": args.min_shadow_agreement, "shadow_frames": args.shadow_frames,
            "shadow_timeout": args.shadow_timeout}
    check_deploy_body(body)
    r = fleet.deploy(body)
    if args.wait:
        r = fleet.follow(r["id"], args.wait_timeout)
    text = render.rollout_text(r)
    if args.wait and r["status"] == RolloutStatus.HALTED:
        print(dumps(r) if args.json else render.terminal_safe(text))  # the outcome per device, then the one error line
        raise RolloutHalted(f"rollout {r['id']} halted: {r['reason']}")
    if not args.wait:
        text += f"\n(queued: a running `edge-fleet serve` drives it; follow with `edge-fleet rollouts {r['id']}`)"
    return r, text


def cmd_rollouts(fleet: Fleet, args: argparse.Namespace) -> Result:
    if args.id:
        r = fleet.rollout(args.id)
        return r, render.rollout_text(r)
    rows = fleet.rollouts()
    return rows, render.rollouts_text(rows)


def cmd_action(fleet: Fleet, args: argparse.Namespace) -> Result:
    r = fleet.act(args.id, args.cmd)
    if r.get("request"):
        return r, render.rollout_text(r) + f"\n({args.cmd} requested; is `edge-fleet serve` running?)"
    return r, render.rollout_text(r)


def cmd_status(fleet: Fleet, args: argparse.Namespace) -> Result:
    out = fleet.status(args.group)
    return out, render.status_text(out["devices"], out["active_rollouts"], out.get("rollout_shadows", []))


def cmd_devices(fleet: Fleet, args: argparse.Namespace) -> Result:
    if args.devices_cmd == "login":
        return device_login(fleet, args.id, rotate=args.rotate)
    if args.devices_cmd == "revoke":
        return device_revoke(fleet, args.id)
    if args.devices_cmd == "group":
        d = fleet.set_group(args.id, None if args.clear else args.new_group)
        return d, f"{args.id}: group {d['group'] or '(none)'}"
    devices = _with_logins(fleet, fleet.devices(args.group))
    lines = [f"{d['id']:<24} {d['profile'] or '-':<20} {d['group'] or '-'}"
             + ("  (broker login revoked)" if d.get("broker_login") == "revoked" else "") for d in devices]
    return devices, "\n".join(lines) or "no devices"


def _local_home(fleet: Fleet, command: str) -> LocalFleet:
    """Device logins are kept in the fleet's home (HOME/broker/logins.json), out of the API's reach."""
    if not isinstance(fleet, LocalFleet):
        raise FleetUsageError(f"device logins live in the fleet's home: run `edge-fleet devices {command}` on the fleet host")
    return fleet


def device_login(fleet: Fleet, device_id: str, rotate: bool = False) -> Result:
    """A device's login to the embedded broker (kept in the fleet home, so local fleets only);
    `rotate`: a new password replaces the one it had (audited, as a leaked password is why)."""
    local = _local_home(fleet, "login")
    if rotate:
        logins, password = actions.rotate_login(local.reg, local.actor, local.home / "broker", device_id)
    else:
        logins, _ = BrokerLogins.load_or_create(local.home / "broker")
        try:
            password = logins.add_device(device_id)
        except ValueError as exc:  # the device id's pattern
            raise FleetUsageError(str(exc)) from None
    out = {"device_id": device_id, "username": device_id, "password": password, "logins": str(logins.path)}
    return out, (f"{device_id}: broker user {device_id}, {'new ' if rotate else ''}password {password}\n"
                 f"(edge-agent serve --device-id {device_id} --username {device_id} --password ...; kept in {logins.path})")


def device_revoke(fleet: Fleet, device_id: str) -> Result:
    """Take a device's broker login away; a running `serve` reloads the broker, which drops the device."""
    local = _local_home(fleet, "revoke")
    logins = actions.revoke_login(local.reg, local.actor, local.home / "broker", device_id)
    out = {"device_id": device_id, "broker_login": "revoked", "logins": str(logins.path)}
    return out, (f"{device_id}: broker login revoked (a running `edge-fleet serve` disconnects the device and refuses "
                 f"it from its next tick; its history stays; `devices login {device_id}` gives it a new login)")


def _with_logins(fleet: Fleet, devices: list[Json]) -> list[Json]:
    """Each device row with `broker_login` (active, revoked or none) when the fleet's home has broker logins."""
    if not isinstance(fleet, LocalFleet) or not (fleet.home / "broker" / LOGINS_NAME).is_file():
        return devices
    try:
        logins, _ = BrokerLogins.load_or_create(fleet.home / "broker")
    except (OSError, BrokerStartError):  # another user's 0600 file, or a damaged one: the list still prints
        return devices
    return [{**d, "broker_login": "active" if d["id"] in logins.devices
             else "revoked" if d["id"] in logins.revoked else "none"} for d in devices]


def cmd_tokens(fleet: Fleet, args: argparse.Namespace) -> Result:
    if args.tokens_cmd == "create":
        t = fleet.create_token(args.name, args.role)
        return t, (f"token {t['name']} ({t['role']}): {t['token']}\n"
                   "(shown once: only its hash is stored; revoke with `edge-fleet tokens revoke NAME`)")
    if args.tokens_cmd == "revoke":
        return fleet.revoke_token(args.name), f"revoked token {args.name}"
    rows = fleet.tokens()
    return rows, render.tokens_text(rows)


def cmd_audit(fleet: Fleet, args: argparse.Namespace) -> Result:
    rows = fleet.audit(args.limit)
    return rows, render.audit_text(rows)
