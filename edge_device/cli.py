"""`edge-device`: probe, set up, flash and check devices over SSH, one or many at a time.

Thin layer over the library: parse arguments, run each device in its own task, print one block
per device (or one summary table for several), exit with the failure's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from edge_agent import __version__
from edge_agent.cli_types import seconds, whole_number
from edge_agent.errors import DEVICE_CLI, EdgekitError, exit_codes_epilog, run_main

from .flash import flash, status
from .inventory import (Entry, InventoryError, Row, load_inventory, overall_code, refuse_duplicates, run_all, summary_table,
                        with_defaults)
from .layout import Layout
from .login import LoginOptionError, read_login
from .probe import probe
from .setup import SetupOptions, setup
from .ssh import Target, connect

log = logging.getLogger("edge_device")


class BadBroker(EdgekitError):
    code_name = "usage"


def _check_broker(url: str, instead: str = "--mqtt-password-file FILE (or -) and --mqtt-username") -> None:
    """Setup's (and `unit`'s) --broker checked on the host before anything is done on the device (a typo was found
    only by the service, after the install), and never with a password in it: the URL goes into the unit file (0644),
    the process list and the progress lines; the password has its own way in (`instead`: a 0600 credentials file)."""
    from edge_agent.ota.broker_url import parse_broker_urls, redact_broker_urls

    try:
        addresses = parse_broker_urls(url)
    except ValueError as exc:  # its message shows the URL without the password
        raise BadBroker(f"--broker {redact_broker_urls(url)}: {exc}") from None
    if any(a.password is not None for a in addresses):
        raise BadBroker(f"--broker {redact_broker_urls(url)}: a password in the URL would be in the unit file and the "
                        f"process list: give it with {instead}")


class NoBundleFile(EdgekitError):
    """A mistyped bundle path is the operator's, checked once on the host (it was 11 "corrupt ... re-download" per device)."""

    code_name = "usage"


def _entries(args: argparse.Namespace) -> list[Entry]:
    if args.inventory and args.targets:  # the targets were ignored: every inventory device was worked on instead
        raise InventoryError(f"name devices on the command line ({' '.join(args.targets)}) or pass --inventory "
                             f"{args.inventory}, not both (--group picks devices of an inventory)")
    if args.group and not args.inventory:  # was ignored: the named targets were worked on whatever their group
        raise InventoryError("--group picks devices of an --inventory FILE: pass one, or leave out --group")
    if args.inventory:
        entries = load_inventory(args.inventory, args.group)
    elif args.targets:
        entries = [Entry(Target.parse(t)) for t in args.targets]
        refuse_duplicates("command line", entries)
    else:
        raise InventoryError("name a device (user@host[:port]) or pass --inventory FILE")
    return [Entry(with_defaults(e.target, identity=args.identity, known_hosts=args.known_hosts,
                                accept_new=args.accept_new or None, port=None), e.remote_dir) for e in entries]


def _layout(args: argparse.Namespace, entry: Entry) -> Layout:
    return Layout(root=entry.remote_dir or args.remote_dir, unit_dir=args.unit_dir)


def _say(args: argparse.Namespace, name: str) -> Callable[[str], None]:
    if args.json or args.quiet:
        return lambda s: None
    return lambda s: print(f"{name}: {s}", file=sys.stderr, flush=True)


async def _op(args: argparse.Namespace, e: Entry) -> dict[str, Any]:
    layout, say = _layout(args, e), _say(args, e.target.name)
    async with connect(e.target, timeout=args.timeout) as dev:
        if args.command == "probe":
            p = await probe(dev, layout, args.python)
            return {"device": e.target.name, "ok": True, **p.to_dict(), "text": p.text(e.target.name)}
        if args.command == "setup":
            opts = SetupOptions(broker=args.broker, trust=args.trust, device_id=args.device_id, profile=args.profile,
                                python=args.python, index_url=args.index_url, service_user=args.service_user,
                                keep_system_onnxruntime=args.keep_system_onnxruntime, login=args.login)
            return await setup(dev, layout, opts, say)
        if args.command == "flash":
            return await flash(dev, layout, args.bundle, runs=args.runs, say=say, allow_downgrade=args.allow_downgrade)
        return await status(dev, layout)


def _fmt_ms(fig: dict[str, Any] | None) -> str:
    if not fig or fig.get("p50_ms") is None:
        return "-"
    return f"{fig['p50_ms']:.3f}/{fig['p99_ms']:.3f}"


COLUMNS: dict[str, list[tuple[str, Callable[[Row], str]]]] = {
    "probe": [("profile", lambda r: str(r.result.get("profile") or "none fits")),
              ("python", lambda r: str(r.result["facts"]["python_version"] or "-")),
              ("agent", lambda r: str(r.result.get("agent_version") or "-"))],
    "setup": [("profile", lambda r: r.result["profile"]), ("python", lambda r: r.result["python"]),
              ("service", lambda r: "running" if r.result["running"] else "stopped")],
    "flash": [("model", lambda r: f"{r.result['bundle']} v{r.result['version']}"),
              ("slot", lambda r: str(r.result["active_slot"])),
              ("device p50/p99 ms", lambda r: _fmt_ms(r.result["device_latency"])),
              ("host p50/p99 ms", lambda r: _fmt_ms(r.result["host_latency"])),
              ("service", lambda r: "running" if r.result["service_running"] else "STOPPED")],
    "status": [("model", lambda r: f"{r.result['model'] or '-'} v{r.result['version'] or '-'}"),
               ("phase", lambda r: r.result["phase"]),
               ("service", lambda r: "running" if r.result["running"] else "stopped")],
}


# a flash into a device whose service is down read as a plain success: the model is installed, nothing serves it
STOPPED = "\n  but the agent service is STOPPED: nothing serves the model (edge-device status; journalctl -u edge-agent)"


def _single_text(command: str, row: Row) -> str:
    r = row.result
    if command == "probe":
        return r["text"]
    if command == "setup":
        return (f"{row.device}: set up {r['agent']} (profile {r['profile']}, Python {r['python']}); service "
                f"{'running' if r['running'] else 'stopped'} ({'systemd' if r['systemd'] else 'no systemd: detached'}), "
                f"unit {r['unit']} [{row.seconds:.1f}s]")
    if command == "flash":
        return (f"{row.device}: {r['bundle']} v{r['version']} active in slot {r['active_slot']}; latency p50/p99 ms: "
                f"device {_fmt_ms(r['device_latency'])} ({r['provider']}), host {_fmt_ms(r['host_latency'])} "
                f"[{row.seconds:.1f}s]" + ("" if r["service_running"] else STOPPED))
    return (f"{row.device}: {r['model'] or '(no model)'} v{r['version'] or '-'} slot {r['active_slot'] or '-'}, "
            f"update {r['phase']}, service {'running' if r['running'] else 'stopped'}")


def run_command(args: argparse.Namespace) -> int:
    if args.command == "flash" and not args.bundle.is_file():
        raise NoBundleFile(f"{args.bundle}: no such bundle file" + (" (a folder)" if args.bundle.is_dir() else ""))
    entries = _entries(args)
    if args.command == "setup":
        _check_broker(args.broker)
    if args.command == "setup":  # read once on the host (a password from stdin can only be read once)
        args.login = read_login(args.mqtt_username, args.mqtt_password_file, args.mqtt_tls_ca, args.fleet_login)
        if args.login and args.login.device_id and len(entries) > 1:
            raise LoginOptionError("--fleet-login is one device's login: set up one device with it at a time")
    rows = asyncio.run(run_all(entries, lambda e: _op(args, e), args.parallel))
    code = overall_code(rows)
    if args.json:
        results = [{**(r.result if r.ok else {"device": r.device, "ok": False, "error": r.error}),
                    "exit_code": r.exit_code, "seconds": round(r.seconds, 2)} for r in rows]
        for res in results:
            res.pop("text", None)
        print(json.dumps({"ok": code == 0, "exit_code": code, "devices": results}, indent=2, default=str))
    elif len(rows) == 1 and rows[0].ok:
        print(_single_text(args.command, rows[0]))
    elif len(rows) > 1:
        print(summary_table(rows, COLUMNS[args.command]))
    for r in rows:
        if not r.ok and (len(rows) == 1 or args.json):
            print(f"edge-device: error: {r.error}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-device",
        description="Provision devices over SSH: probe the board, install the agent as a service (no internet needed "
        "on the device), flash bundles through the agent's A/B install, many devices in parallel.",
        epilog=exit_codes_epilog(DEVICE_CLI), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edge-device {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, python: bool = False) -> None:  # python: flash/status use setup's venv
        p.add_argument("targets", nargs="*", metavar="USER@HOST[:PORT]", help="devices (or --inventory)")
        p.add_argument("--inventory", type=Path, help="TOML inventory of devices (hosts, users, profiles, groups)")
        p.add_argument("--group", help="only the inventory's devices in this group")
        p.add_argument("--parallel", type=whole_number(1), default=8, help="devices worked on at once (default 8)")
        p.add_argument("--identity", type=Path, help="SSH private key to log in with (default: ssh agent, ~/.ssh/id_*)")
        p.add_argument("--known-hosts", type=Path, help="known_hosts file (default ~/.ssh/known_hosts)")
        p.add_argument("--accept-new", action="store_true",
                       help="record the host key of a device not yet in known_hosts (a CHANGED key is always refused)")
        p.add_argument("--timeout", type=seconds(positive=True), default=10.0, help="SSH connect timeout in seconds (default 10)")
        p.add_argument("--remote-dir", default="/opt/edgekit", help="edgekit's folder on the device (default /opt/edgekit)")
        p.add_argument("--unit-dir", default="/etc/systemd/system", help=argparse.SUPPRESS)
        if python:  # flash and status took --python and ignored it
            p.add_argument("--python", help="the device's Python to use (default: the newest python3.X found)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        # also after the command, where the docs' examples and `--json` put options (it was "unrecognized arguments")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress lines")
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv for debug)")

    p = sub.add_parser("probe", help="what is this board, which profile fits, can it run the agent?")
    common(p, python=True)
    p = sub.add_parser("setup", help="install the agent (venv from a host-built wheelhouse) and run it as a service",
                       description="Probe, build a wheelhouse for the device's Python and CPU on this host, push it, "
                       "install edgekit[agent] into a venv, push the trusted PUBLIC keys, write the profile and the "
                       "broker login (checked by logging in as the service will: 89 if refused), install and start a "
                       "hardened systemd unit for `edge-agent serve`.")
    common(p, python=True)
    p.add_argument("--broker", required=True, help="the fleet's MQTT broker, mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--trust", type=Path, action="append", required=True, metavar="PUB",
                   help="public key the device accepts bundles from (repeatable; private keys are refused)")
    p.add_argument("--mqtt-username", metavar="USER", help="the agent's broker user name (default: the device id)")
    p.add_argument("--mqtt-password-file", type=Path, metavar="FILE",
                   help="file whose first line is the agent's broker password, '-' for stdin (never on the command "
                   "line); written on the device as a 0600 credentials file the service reads")
    p.add_argument("--mqtt-tls-ca", type=Path, metavar="PEM", help="CA certificate of the broker (mqtts://): pushed to "
                   "the device")
    p.add_argument("--fleet-login", type=Path, metavar="FILE",
                   help="the output of `edge-fleet devices login ID --json` ('-' for stdin): user name, password and "
                   "device id in one")
    p.add_argument("--profile", help="device profile (default: detected from the board)")
    p.add_argument("--device-id", help="the agent's device id (default: from the host name)")
    p.add_argument("--index-url", help="install from this package index instead of pushing a wheelhouse")
    p.add_argument("--service-user", default="edgekit", help="user the service runs as (created if missing; default edgekit)")
    p.add_argument("--keep-system-onnxruntime", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the onnxruntime(-gpu) installed on the system (default: yes on Jetson/JetPack)")
    p = sub.add_parser("flash", help="push a bundle, verify, install A/B, health-check and bench it on the device")
    p.add_argument("bundle", type=Path)
    common(p)
    p.add_argument("--runs", type=whole_number(1), default=50, help="bench runs on the device (default 50)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="flash a lower version of the active model (or its version rebuilt): putting an older one back")
    p = sub.add_parser("status", help="the service, the active model and the update phase")
    common(p)
    p = sub.add_parser("wheelhouse", help="build the agent's wheelhouse for a device platform here (no SSH)")
    p.add_argument("--python-version", required=True, help="the device's Python, e.g. 3.11")
    p.add_argument("--arch", required=True, help="aarch64, x86_64, ...")
    p.add_argument("--glibc", default="2.17", help="the device's glibc version (ldd --version), default 2.17")
    p.add_argument("--out", type=Path, help="folder (default: the host cache)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("unit", help="print the systemd unit setup installs (no SSH)")
    p.add_argument("--broker", required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--remote-dir", default="/opt/edgekit")
    p.add_argument("--service-user", default="edgekit")
    p.add_argument("--profile", help="sets MemoryMax to the profile's memory budget")
    p.add_argument("--cameras", action="store_true", help="the device has cameras (video group, no PrivateDevices)")
    p.add_argument("--credentials", action="store_true",
                   help="the service reads its broker login from REMOTE_DIR/credentials.env")
    return parser


def run_local(args: argparse.Namespace) -> int:
    """`wheelhouse` and `unit`: what setup would send, made here (for Ansible and air-gapped copies)."""
    if args.command == "wheelhouse":
        from .wheelhouse import build_wheelhouse

        wh = build_wheelhouse(args.python_version, args.arch, args.glibc, folder=args.out)
        result = {"ok": True, "folder": str(wh.folder), "wheels": len(wh.files), "size_mb": round(wh.size_bytes / 1e6, 1)}
        print(json.dumps(result) if args.json else f"{wh.folder}: {len(wh.files)} wheels, {wh.size_bytes / 1e6:.1f} MB")
        return 0
    from device_profiles import load_profile

    from .layout import render_unit

    budget = load_profile(args.profile).limits.memory_budget_mb if args.profile else None
    layout = Layout(root=args.remote_dir)
    extra = ("--credentials", layout.credentials) if args.credentials else ()
    # as setup does: a password in the URL was printed, into a world-readable unit file
    _check_broker(args.broker, "--credentials (the service reads its login from REMOTE_DIR/credentials.env, 0600)")
    print(render_unit(layout, args.service_user, args.broker, args.device_id, budget, args.cameras, extra), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("asyncssh").setLevel(logging.WARNING if args.verbose < 2 else logging.DEBUG)
    body = (lambda: run_local(args)) if args.command in ("wheelhouse", "unit") else (lambda: run_command(args))
    return run_main("edge-device", body, json_mode=getattr(args, "json", False), verbose=args.verbose > 0)


if __name__ == "__main__":
    sys.exit(main())
