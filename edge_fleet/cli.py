"""`edge-fleet`: run the fleet server, publish bundles, deploy them in stages, show status.

How the commands talk to each other: the registry (SQLite) is the single meeting point.
`publish`, `status`, `devices`, `bundles` and `rollouts` read and write the registry file
directly; `deploy` stores a *pending* rollout there, and the running `edge-fleet serve`
process (the only MQTT writer of desired states) picks it up within a fraction of a second
and drives it. `deploy --wait` then follows the rollout in the registry until it ends.
Every failure prints one line `edge-fleet: error: ...` and exits with the code that
edge_fleet/errors.py registers for it (`edge-fleet --help` lists them, generated from there).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_agent.bundle import TrustStore

from .errors import FleetError, RolloutHalted, exit_codes_epilog, run_cli
from .registry import ACTIVE_ROLLOUT, DeviceRecord, Registry, RolloutRecord, RolloutStatus, open_registry

log = logging.getLogger("edge_fleet")

DEFAULT_HOME = Path(os.environ.get("EDGE_FLEET_HOME", Path.home() / ".edgekit" / "fleet"))



Result = tuple[Any, str]


def _registry(args: argparse.Namespace) -> Registry:
    """HOME/fleet.db with its store in HOME/bundles, or --db: a file (store beside it) or an engine URL."""
    home = Path(args.home).expanduser()
    if not args.db:
        return open_registry(home / "fleet.db", store_dir=home / "bundles")
    if "://" in args.db:
        return open_registry(args.db, store_dir=home / "bundles")
    return open_registry(Path(args.db).expanduser())


def _iter_latency(latency: dict[str, Any], *names: str) -> Iterator[float | None]:
    """p50/p99 style values from a telemetry latency dict, accepting `p50` or `p50_ms` keys."""
    for n in names:
        v = latency.get(n, latency.get(f"{n}_ms"))
        yield float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _ts(value: float | None) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


# ---- commands ------------------------------------------------------------------------------


def _listen(text: str) -> tuple[str, int | None]:
    """argparse type for --listen: HOST, HOST:PORT or [IPv6]:PORT (PORT 0 or none: a free port)."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or None)
    elif text.count(":") == 1:
        host, port = text.split(":")
    bad_port = port is not None and not (port.isdigit() and int(port) < 65536)
    if not host or bad_port or (":" in host and not _is_ipv6(host)):
        raise argparse.ArgumentTypeError(f"must be HOST, HOST:PORT or [IPv6]:PORT, got {text!r}")
    return host, int(port) or None if port else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> Result:
    from .mqtt import MqttSettings
    from .server import FleetServer

    reg = _registry(args)
    settings = MqttSettings(url=args.broker or "", username=args.username,
                            password=args.password or os.environ.get("EDGE_FLEET_MQTT_PASSWORD"),
                            ca_file=args.ca, cert_file=args.cert, key_file=args.key, client_id=args.client_id)
    server = FleetServer(reg, args.broker, prefix=args.prefix, embedded=args.embedded, settings=settings,
                         broker_dir=Path(args.home).expanduser() / "broker", listen=args.listen)
    try:
        server.start()
    except BaseException:
        reg.close()
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    assert server.broker is not None
    embedded = server.broker.kind if server.broker.managed else None
    info = {"broker": server.url, "embedded": embedded, "db": reg.location, "prefix": args.prefix}
    line = json.dumps(info) if args.json else (
        f"edge-fleet: serving on {server.url}" + (f" (embedded {embedded})" if embedded else "")
        + f", registry {reg.location}")
    print(line, flush=True)
    try:
        server.wait()
    finally:
        server.stop()
        reg.close()
    return {"stopped": True}, "edge-fleet: stopped"


def _trust(args: argparse.Namespace) -> TrustStore:
    paths = list(args.trust or [])
    default = Path(args.home).expanduser() / "trusted"
    if not paths and default.is_dir():
        paths = [default]
    if not paths:
        raise FleetError(f"no trusted keys: pass --trust PUBKEY (or put *.pub files in {default})")
    return TrustStore.from_paths(paths)


def cmd_publish(args: argparse.Namespace) -> Result:
    from .publish import publish_bundle

    with _registry(args) as reg:
        rec = publish_bundle(reg, Path(args.bundle), _trust(args))
    return (rec.to_json(),
            f"published {rec.name}:{rec.version} for {rec.profile} ({rec.size} B, signed by {rec.key_id}) "
            f"sha256={rec.sha256}")


def cmd_bundles(args: argparse.Namespace) -> Result:
    with _registry(args) as reg:
        rows = [b.to_json() for b in reg.bundles()]
    lines = [f"{'NAME:VERSION':<24} {'PROFILE':<20} {'SIZE':>10}  SHA256"]
    lines += [f"{b['name'] + ':' + str(b['version']):<24} {b['profile']:<20} {b['size']:>10}  {b['sha256'][:16]}"
              for b in rows]
    return rows, "\n".join(lines)


def _follow(reg: Registry, rollout_id: str, timeout: float) -> RolloutRecord:
    """Poll the registry until the rollout is no longer active (the running server drives it)."""
    deadline = time.monotonic() + timeout if timeout else None
    while (r := reg.rollout(rollout_id)) is not None and r.status in ACTIVE_ROLLOUT:
        if deadline is not None and time.monotonic() > deadline:
            raise FleetError(f"rollout {rollout_id} still {r.status} after {timeout:.0f}s "
                             "(is `edge-fleet serve` running?)")
        time.sleep(0.2)
    if r is None:
        raise FleetError(f"rollout {rollout_id} disappeared from the registry")
    return r


def cmd_deploy(args: argparse.Namespace) -> Result:
    from .rollout import DEFAULT_STAGES, parse_max_failures, parse_stages, plan_rollout

    with _registry(args) as reg:
        plan = plan_rollout(
            reg, args.target,
            devices=args.devices.split(",") if args.devices is not None else None,
            group=args.group,
            stages=parse_stages(args.stages) if args.stages else list(DEFAULT_STAGES),
            max_failures=parse_max_failures(args.max_failures),
            stage_timeout=args.stage_timeout,
            source_url=args.source_url,
            stage_soak=args.stage_soak,
        )
        result = _follow(reg, plan.id, args.wait_timeout) if args.wait else reg.rollout(plan.id)
    assert result is not None
    text = _rollout_text(result)
    if args.wait and result.status == RolloutStatus.HALTED:
        print(json.dumps(result.to_json(), indent=2) if args.json else text)
        raise RolloutHalted(f"rollout {plan.id} halted: {result.reason}")
    if not args.wait:
        text += "\n(queued: a running `edge-fleet serve` drives it; follow with `edge-fleet rollouts " + plan.id + "`)"
    return result.to_json(), text


def _rollout_text(r: RolloutRecord) -> str:
    lines = [f"rollout {r.id}: {r.name}:{r.version} {r.status.upper()}"
             f" stage {max(r.stage, 0) + 1}/{len(r.stages)} (cumulative devices {list(r.stages)})"
             + (f" - {r.reason}" if r.reason else "")]
    for d in r.devices:
        stage = "skip" if d.stage < 0 else f"s{d.stage + 1}"
        lines.append(f"  {d.device_id:<24} {stage:<5} {d.status:<12} {d.reason or ''}")
    return "\n".join(lines)


def cmd_rollouts(args: argparse.Namespace) -> Result:
    with _registry(args) as reg:
        if args.id:
            r = reg.rollout(args.id)
            if r is None:
                raise FleetError(f"no rollout {args.id!r}")
            return r.to_json(), _rollout_text(r)
        rows = reg.rollouts()
    lines = [f"{r.id:<32} {r.name}:{r.version:<6} {r.status:<10} {r.reason or ''}" for r in rows]
    return [r.to_json() for r in rows], "\n".join(lines) or "no rollouts"


def _device_view(d: DeviceRecord) -> dict[str, Any]:
    """The flat per-device view `status` and `devices` print."""
    p50, p99 = _iter_latency(d.latency, "p50", "p99")
    cur = d.current
    return {"id": d.id, "profile": d.profile, "group": d.group, "model": cur.name if cur else None,
            "version": cur.version if cur else None, "sha256": cur.sha256 if cur else None, "phase": d.phase,
            "deployment_id": d.deployment_id, "last_error": d.last_error, "last_seen": d.last_seen,
            "presence": d.presence or "unknown", "latency_p50_ms": p50, "latency_p99_ms": p99,
            "inferences": d.inferences, "errors": d.errors, "agent_version": d.agent_version,
            "previous": asdict(d.previous) if d.previous else None}


def _status_text(devices: list[dict[str, Any]], active: list[str]) -> str:
    fmt = "{:<20} {:<18} {:<10} {:<14} {:>4} {:<12} {:<8} {:<19} {:>8} {:>8}"
    lines = [fmt.format("DEVICE", "PROFILE", "GROUP", "MODEL", "VER", "PHASE", "PRESENCE", "LAST SEEN",
                        "P50 ms", "P99 ms")]
    for d in devices:
        lines.append(fmt.format(d["id"], d["profile"] or "-", d["group"] or "-", d["model"] or "-",
                                d["version"] or "-", d["phase"] or "-", d["presence"], _ts(d["last_seen"]),
                                f"{d['latency_p50_ms']:.2f}" if d["latency_p50_ms"] is not None else "-",
                                f"{d['latency_p99_ms']:.2f}" if d["latency_p99_ms"] is not None else "-"))
        if d["last_error"]:
            lines.append(f"  last error: {d['last_error']}")
    if active:
        lines.append("active rollouts: " + ", ".join(active))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> Result:
    with _registry(args) as reg:
        devices = [_device_view(d) for d in reg.devices(args.group)]
        active = [r.id for r in reg.rollouts((RolloutStatus.PENDING, RolloutStatus.RUNNING))]
    return {"devices": devices, "active_rollouts": active}, _status_text(devices, active)


def cmd_devices(args: argparse.Namespace) -> Result:
    with _registry(args) as reg:
        if args.devices_cmd == "group":
            reg.set_group(args.id, None if args.clear else args.new_group)
            d = _device_view(reg.device(args.id) or DeviceRecord(id=args.id))
            return d, f"{args.id}: group {d['group'] or '(none)'}"
        devices = [_device_view(d) for d in reg.devices(args.group)]
    lines = [f"{d['id']:<24} {d['profile'] or '-':<20} {d['group'] or '-'}" for d in devices]
    return devices, "\n".join(lines) or "no devices"


# ---- parser --------------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=str(DEFAULT_HOME),
                        help="fleet folder: registry, bundle store, broker data (default %(default)s, env EDGE_FLEET_HOME)")
    common.add_argument("--db", help="registry SQLite file (default HOME/fleet.db)")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("-v", "--verbose", action="store_true")
    return common


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the fleet server (long running)")
    s.add_argument("--broker", help="mqtt://[user:pass@]host:port or mqtts://...; default: start an embedded broker")
    s.add_argument("--embedded", choices=("mosquitto", "amqtt"), default="mosquitto",
                   help="preferred embedded broker (falls back to the other when not installed)")
    s.add_argument("--listen", type=_listen, default=("127.0.0.1", None), metavar="HOST[:PORT]",
                   help="where the embedded broker listens (default 127.0.0.1 on a free port)")
    s.add_argument("--prefix", default="edgekit", help="topic prefix (default %(default)s)")
    s.add_argument("--username", help="MQTT username")
    s.add_argument("--password", help="MQTT password (or env EDGE_FLEET_MQTT_PASSWORD)")
    s.add_argument("--ca", type=Path, help="CA certificate (PEM) to verify the broker; enables TLS")
    s.add_argument("--cert", type=Path, help="client certificate (PEM) for TLS client authentication")
    s.add_argument("--key", type=Path, help="client private key (PEM)")
    s.add_argument("--client-id", default="edge-fleet", help="MQTT client id (default %(default)s)")
    s.set_defaults(func=cmd_serve)


def _add_deploy(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("deploy", parents=[common], help="staged rollout of NAME:VERSION")
    s.add_argument("target", metavar="NAME:VERSION")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--devices", help="comma-separated device ids")
    g.add_argument("--group", help="every device of this group")
    s.add_argument("--stages", default="5,25,100", help="cumulative percentages (default %(default)s)")
    s.add_argument("--max-failures", default="0",
                   help="halt when failures exceed this count (2) or fraction (0.1, 10%%); default 0")
    s.add_argument("--stage-timeout", type=float, default=900.0, help="seconds per device (default %(default)s)")
    s.add_argument("--stage-soak", type=float, default=0.0, metavar="SECONDS",
                   help="seconds each device must stay on the new bundle before the next stage starts; match the "
                   "agents' --probation (60) so a model that fails on live inputs halts the rollout (default 0)")
    s.add_argument("--source-url", metavar="TEMPLATE",
                   help="devices download over HTTP(S) instead of MQTT blocks, from this URL template "
                   "({sha256}, {name}, {version}, {profile}), e.g. https://cdn.example.com/{sha256}.edgebundle")
    s.add_argument("--wait", action="store_true", help="follow the rollout until it ends; exit 7 if halted")
    s.add_argument("--wait-timeout", type=float, default=0.0, help="give up waiting after S seconds (0 = never)")
    s.set_defaults(func=cmd_deploy)


def _add_publish(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("publish", parents=[common], help="verify a bundle and add it to the registry")
    s.add_argument("bundle")
    s.add_argument("--trust", action="append", help="trusted public key or folder of *.pub (default HOME/trusted)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("bundles", parents=[common], help="list published bundles")
    s.set_defaults(func=cmd_bundles)


def _add_views(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("rollouts", parents=[common], help="list rollouts, or show one")
    s.add_argument("id", nargs="?")
    s.set_defaults(func=cmd_rollouts)

    s = sub.add_parser("status", parents=[common], help="per-device model, phase, presence, latency")
    s.add_argument("--group")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("devices", help="list devices or set a device's group")
    dsub = s.add_subparsers(dest="devices_cmd", required=True)
    lp = dsub.add_parser("list", parents=[common], help="list known devices")
    lp.add_argument("--group", help="only this group")
    gp = dsub.add_parser("group", parents=[common], help="set (or --clear) the group of a device")
    gp.add_argument("id")
    gp.add_argument("new_group", metavar="GROUP", nargs="?")
    gp.add_argument("--clear", action="store_true", help="remove the device from its group")
    s.set_defaults(func=cmd_devices)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-fleet", description=__doc__.split("\n")[0],
                                epilog=exit_codes_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = _common_options()
    _add_serve(sub, common)
    _add_publish(sub, common)
    _add_deploy(sub, common)
    _add_views(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.cmd == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # the embedded amqtt broker and its state machine log every step at INFO
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.cmd == "devices" and args.devices_cmd == "group" and not args.clear and not args.new_group:
        parser.error("devices group ID GROUP (or --clear)")
    func: Callable[[argparse.Namespace], Result] = args.func

    def body() -> int:
        result, text = func(args)
        print(json.dumps(result, indent=2, default=str) if args.json else text)
        return 0

    # no JSON error object: `deploy --wait --json` has already printed the halted rollout as its JSON result
    return run_cli("edge-fleet", body, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
