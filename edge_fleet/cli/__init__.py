"""`edge-fleet`: run the fleet server, publish bundles, deploy them in stages, show status.

How the commands talk to each other: the registry (SQLite) is the single meeting point.
`publish`, `status`, `devices`, `bundles` and `rollouts` read and write the registry file
directly; `deploy` stores a *pending* rollout there, and the running `edge-fleet serve`
process (the only MQTT writer of desired states) picks it up within a fraction of a second
and drives it. `deploy --wait` then follows the rollout in the registry until it ends.
With `--api URL --token T` the same commands work on a remote fleet through its management
API (backend.py: LocalFleet / remote.py: RemoteFleet, one interface).
Every failure prints one line `edge-fleet: error: ...` and exits with the code that
edge_fleet/errors.py registers for it (`edge-fleet --help` lists them, generated from there).

    parser.py    the command line        commands.py  one function per command
    backend.py   Fleet, LocalFleet       remote.py    RemoteFleet over HTTP (stdlib only)
    render.py    text output             serve.py     `serve` (MQTT side + --http API/console)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import failure_record

from ..errors import AccessDenied, RolloutHalted, run_cli
from ..registry import Registry, open_registry
from . import commands, render
from ..views import dumps
from .backend import Fleet, LocalFleet
from .parser import DEFAULT_HOME, build_parser
from .serve import cmd_serve

COMMANDS: dict[str, Callable[[Fleet, argparse.Namespace], tuple[Any, str]]] = {
    "publish": commands.cmd_publish, "bundles": commands.cmd_bundles, "deploy": commands.cmd_deploy,
    "rollouts": commands.cmd_rollouts, "halt": commands.cmd_action, "resume": commands.cmd_action,
    "rollback": commands.cmd_action, "status": commands.cmd_status, "devices": commands.cmd_devices,
    "tokens": commands.cmd_tokens, "audit": commands.cmd_audit,
}


def open_local_registry(args: argparse.Namespace) -> Registry:
    """HOME/fleet.db with its store in HOME/bundles, or --db: a file (store beside it) or an engine URL."""
    home = Path(args.home).expanduser()
    if not args.db:
        return open_registry(home / "fleet.db", store_dir=home / "bundles")
    if "://" in args.db:
        return open_registry(args.db, store_dir=home / "bundles")
    return open_registry(Path(args.db).expanduser())


def open_fleet(args: argparse.Namespace) -> Fleet:
    """The remote fleet when --api is given, else the local registry."""
    if args.api:
        from .remote import ApiClient, RemoteFleet

        if not args.token:
            raise AccessDenied("--api needs a token: --token T or env EDGE_FLEET_TOKEN")  # 65, as a missing one is
        return RemoteFleet(ApiClient(args.api, args.token, ca=args.api_ca))
    return LocalFleet(open_local_registry(args), Path(args.home).expanduser())


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
    if args.cmd == "serve" and args.api:
        parser.error("serve runs a fleet here; --api is for the other commands")
    if args.cmd != "serve" and not args.api:  # not for serve: EDGE_FLEET_API in the fleet host's profile refused it
        args.api = os.environ.get("EDGE_FLEET_API") or None

    def body() -> int:
        try:
            if args.cmd == "serve":
                result, text = cmd_serve(args)
            else:
                fleet = open_fleet(args)
                try:
                    result, text = COMMANDS[args.cmd](fleet, args)
                finally:
                    fleet.close()
        except Exception as exc:
            # stdout was empty on failure, which no JSON reader takes; `deploy --wait --json` printed the halted
            # rollout already (its result): one JSON document either way
            if args.json and not isinstance(exc, RolloutHalted):
                print(dumps(failure_record(exc)))
            raise
        print(dumps(result) if args.json else render.terminal_safe(text))
        return 0

    return run_cli("edge-fleet", body, verbose=args.verbose)


__all__ = ["DEFAULT_HOME", "build_parser", "main", "open_local_registry"]


if __name__ == "__main__":
    sys.exit(main())
