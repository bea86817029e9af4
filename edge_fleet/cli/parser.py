"""`edge-fleet`'s command line: every subcommand and option, and --help's exit-code table."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from edge_agent.cli_types import seconds, whole_number

from ..api.limits import DEFAULT_MAX_UPLOAD
from ..errors import exit_codes_epilog
from ..server import LEASE_TTL
from .serve import http_address, listen_address

DEFAULT_HOME = Path(os.environ.get("EDGE_FLEET_HOME", Path.home() / ".edgekit" / "fleet"))


def _remote_options(p: argparse.ArgumentParser, default: Any) -> None:
    """--api/--token/--api-ca: on the main parser with real defaults, on each subcommand with SUPPRESS
    so that `edge-fleet --api URL status` and `edge-fleet status --api URL` both work."""
    p.add_argument("--api", metavar="URL", default=default(None),  # EDGE_FLEET_API: main(), for commands but serve
                   help="work on a remote fleet through its management API (env EDGE_FLEET_API)")
    p.add_argument("--token", default=default(os.environ.get("EDGE_FLEET_TOKEN")),
                   help="API token for --api (env EDGE_FLEET_TOKEN)")
    p.add_argument("--api-ca", type=Path, metavar="PEM", default=default(None),
                   help="CA certificate that signed the API's TLS certificate (self-signed servers)")


def _local_options(p: argparse.ArgumentParser, default: Any) -> None:
    """--home/--db/--json/-v, placed like --api: `edge-fleet --home H status` was refused with `argument cmd:
    invalid choice: 'H'`, and `edge-fleet --json status` with `unrecognized arguments: --json`."""
    p.add_argument("--home", default=default(str(DEFAULT_HOME)),
                   help=f"fleet folder: registry, bundle store, broker data (default {DEFAULT_HOME}, env EDGE_FLEET_HOME)")
    p.add_argument("--db", default=default(None),
                   help="registry: a SQLite file (default HOME/fleet.db) or postgresql://user:pass@host/db "
                        "(several fleet servers on one database)")
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true", default=default(False))


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _local_options(common, lambda _v: argparse.SUPPRESS)
    _remote_options(common, lambda _v: argparse.SUPPRESS)
    return common


def _add_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the fleet server (long running)")
    s.add_argument("--broker", action="append", metavar="URL",
                   help="mqtt://[user:pass@]host:port or mqtts://...; repeat it (or give a comma list) for the nodes "
                        "of a clustered broker: the server moves to the next one when its node dies. "
                        "Default: start an embedded broker")
    s.add_argument("--embedded", choices=("mosquitto", "amqtt"), default="mosquitto",
                   help="preferred embedded broker (falls back to the other when not installed)")
    s.add_argument("--listen", type=listen_address, default=("127.0.0.1", None), metavar="HOST[:PORT]",
                   help="where the embedded broker listens (default 127.0.0.1 on the port it had at its last "
                        "start in this HOME when free, so devices reconnect after a restart; else a free port)")
    s.add_argument("--anonymous", action="store_true",
                   help="embedded broker without logins or ACL (by default it requires logins, generated on the "
                   "first start in HOME/broker/logins.json; give each device one with `devices login ID`)")
    s.add_argument("--prefix", default="edgekit", help="topic prefix (default %(default)s)")
    s.add_argument("--username", help="MQTT username")
    s.add_argument("--password", help="MQTT password (or env EDGE_FLEET_MQTT_PASSWORD)")
    s.add_argument("--ca", type=Path, help="CA certificate (PEM) to verify the broker; enables TLS")
    s.add_argument("--cert", type=Path, help="client certificate (PEM) for TLS client authentication")
    s.add_argument("--key", type=Path, help="client private key (PEM)")
    s.add_argument("--client-id", default="edge-fleet",
                   help="MQTT client id (default %(default)s; with --share-group a unique one per server)")
    s.add_argument("--url-secret-file", type=Path, metavar="FILE",
                   help="sign --source-url downloads per device for nginx's secure_link with this secret "
                        "(docs/fleet.md); s3:// templates are pre-signed with boto3's credentials")
    m = s.add_argument_group("several servers (one PostgreSQL registry, one broker or cluster)")
    m.add_argument("--share-group", metavar="NAME", default=os.environ.get("EDGE_FLEET_SHARE_GROUP"),
                   help="the same NAME on every server of the fleet: device messages reach one of them "
                        "(MQTT $share/NAME/...); env EDGE_FLEET_SHARE_GROUP")
    m.add_argument("--lease-ttl", type=seconds(positive=True), default=LEASE_TTL, metavar="S",
                   help="one server drives rollouts and renews its lease each tick; when it dies another "
                        "takes over after at most S seconds (default %(default)s)")
    h = s.add_argument_group("management API and web console")
    h.add_argument("--http", type=http_address, metavar="[HOST:]PORT",
                   help="serve the API and console on this port (127.0.0.1 unless a host is given; 0: a free port)")
    h.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (chain)")
    h.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    h.add_argument("--trust", action="append",
                   help="trusted public key or folder for bundle uploads (default HOME/trusted)")
    h.add_argument("--max-upload", type=whole_number(1), default=DEFAULT_MAX_UPLOAD, metavar="BYTES",
                   help="largest bundle upload accepted (default %(default)s; larger: HTTP 413)")


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
    s.add_argument("--min-shadow-agreement", type=float, default=None, metavar="FRACTION",
                   help="shadow gate: each device runs the new model beside the active one on live frames and "
                   "switches only if they agree on at least this share (e.g. 0.9); otherwise it reports "
                   "shadow_failed, keeps the old model, and counts as a failed device (default: no shadow run)")
    s.add_argument("--shadow-frames", type=int, default=300, metavar="N",
                   help="live frames the shadow run compares (default %(default)s)")
    s.add_argument("--shadow-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long a device waits for live frames; none by then: it switches and reports "
                   "shadow skipped (default %(default)s)")
    s.add_argument("--wait", action="store_true", help="follow the rollout until it ends; exit 7 if halted")
    s.add_argument("--wait-timeout", type=seconds(), default=0.0,
                   help="give up waiting after S seconds (0 = never): exit 68, the rollout goes on")


def _add_publish(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("publish", parents=[common], help="verify a bundle and add it to the registry")
    s.add_argument("bundle")
    s.add_argument("--trust", action="append", help="trusted public key or folder of *.pub (default HOME/trusted)")
    sub.add_parser("bundles", parents=[common], help="list published bundles")


def _add_views(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("rollouts", parents=[common], help="list rollouts, or show one")
    s.add_argument("id", nargs="?")
    for action, what in (("halt", "pause a rollout: no new stage starts (devices in flight finish)"),
                         ("resume", "continue a halted (paused) rollout"),
                         ("rollback", "halt now and send every switched device its previous bundle")):
        a = sub.add_parser(action, parents=[common], help=what)
        a.add_argument("id", metavar="ROLLOUT")
    s = sub.add_parser("status", parents=[common], help="per-device model, phase, presence, latency")
    s.add_argument("--group")
    s = sub.add_parser("devices", help="list devices or set a device's group")
    dsub = s.add_subparsers(dest="devices_cmd", required=True)
    lp = dsub.add_parser("list", parents=[common], help="list known devices")
    lp.add_argument("--group", help="only this group")
    gp = dsub.add_parser("group", parents=[common], help="set (or --clear) the group of a device")
    gp.add_argument("id")
    gp.add_argument("new_group", metavar="GROUP", nargs="?")
    gp.add_argument("--clear", action="store_true", help="remove the device from its group")
    lg = dsub.add_parser("login", parents=[common], help="the embedded broker login of a device (created on first "
                         "use; a running `serve` picks it up): give it to the device with `edge-device setup --fleet-login FILE` "
                         "(this command's --json output)")
    lg.add_argument("id")
    lg.add_argument("--rotate", action="store_true", help="replace the device's password with a new one (printed "
                    "once): a running `serve` refuses the old one from then on")
    rv = dsub.add_parser("revoke", parents=[common], help="take a device's broker login away (a stolen or retired "
                         "device): a running `serve` disconnects it and refuses it; its history stays")
    rv.add_argument("id")


def _add_access(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("tokens", help="API tokens: create (secret shown once), list, revoke")
    tsub = s.add_subparsers(dest="tokens_cmd", required=True)
    c = tsub.add_parser("create", parents=[common], help="create a token")
    c.add_argument("name")
    c.add_argument("--role", choices=("viewer", "operator", "admin"), required=True,
                   help="viewer reads; operator also deploys, halts, resumes, rolls back; admin also publishes")
    tsub.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    r = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    r.add_argument("name")
    a = sub.add_parser("audit", parents=[common], help="who published, deployed, halted or rolled back what, when")
    a.add_argument("--limit", type=whole_number(1), default=50, help="newest entries to show (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-fleet", description="Run the fleet server, publish bundles, deploy them "
                                "in stages, show status; locally or through a fleet's API (--api).",
                                epilog=exit_codes_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _local_options(p, lambda v: v)
    _remote_options(p, lambda v: v)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = _common_options()
    _add_serve(sub, common)
    _add_publish(sub, common)
    _add_deploy(sub, common)
    _add_views(sub, common)
    _add_access(sub, common)
    return p
