"""`edge-fleet serve`: the MQTT side (FleetServer) and, with --http, the API and console beside it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
from pathlib import Path
from typing import Any

from .backend import trust_store

Result = tuple[Any, str]


def listen_address(text: str) -> tuple[str, int | None]:
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


def http_address(text: str) -> tuple[str, int]:
    """argparse type for --http: PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT; 0 picks a free port."""
    if text.isdigit():
        host, port = "127.0.0.1", text
    else:
        host, parsed = listen_address(text)
        port = str(parsed or 0)
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text!r}")
    return host, int(port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> Result:
    from edge_agent.ota.broker_url import redact_broker_urls, split_broker_urls

    from ..mqtt import MqttSettings
    from ..rollout.signed_urls import UrlSigner
    from ..server import FleetServer
    from . import open_local_registry

    reg = open_local_registry(args)
    home = Path(args.home).expanduser()
    client_id = args.client_id
    if args.share_group and client_id == "edge-fleet":  # servers sharing a broker need their own ids
        client_id = f"edge-fleet-{os.getpid()}-{os.urandom(3).hex()}"
    brokers = ",".join(split_broker_urls(args.broker)) or None  # repeated --broker and comma lists alike
    settings = MqttSettings(url=brokers or "", username=args.username,
                            password=args.password or os.environ.get("EDGE_FLEET_MQTT_PASSWORD"),
                            ca_file=args.ca, cert_file=args.cert, key_file=args.key, client_id=client_id)
    server = FleetServer(reg, brokers, prefix=args.prefix, embedded=args.embedded, settings=settings,
                         broker_dir=home / "broker", listen=args.listen, anonymous=args.anonymous,
                         share_group=args.share_group, lease_ttl=args.lease_ttl,
                         signer=UrlSigner.from_secret_file(args.url_secret_file))
    http = None
    try:
        http = _http_server(args, reg, home) if args.http is not None else None  # bad TLS files: before the broker
        server.start()
        if http is not None:
            http.start()
    except BaseException:
        server.stop()
        reg.close()
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    assert server.broker is not None
    embedded = server.broker.kind if server.broker.managed else None
    info = {"broker": redact_broker_urls(server.url),  # as given, but never its password
            "connected_to": server.broker_in_use, "brokers": len(split_broker_urls(server.url)),
            "embedded": embedded, "db": reg.location, "prefix": args.prefix,
            "server_id": server.server_id, "share_group": args.share_group,
            "http": http.url if http else None, "tokens": len(reg.tokens()),
            "logins": str(server.logins.path) if server.logins else None, "logins_created": server.logins_created}
    print(json.dumps(info) if args.json else _banner(info), flush=True)
    try:
        server.wait()
    finally:
        if http is not None:
            http.stop()
        server.stop()
        reg.close()
    return {"stopped": True}, "edge-fleet: stopped"


def _http_server(args: argparse.Namespace, reg: Any, home: Path) -> Any:
    from ..api.deps import ApiState
    from ..api.server import HttpServer

    paths = list(args.trust or [])
    state = ApiState(reg, trust=lambda: trust_store(home, paths, required=False), max_upload=args.max_upload)
    host, port = args.http
    return HttpServer(state, host, port, cert=args.tls_cert, key=args.tls_key)


def _banner(info: dict[str, Any]) -> str:
    line = (f"edge-fleet: serving on {info['connected_to']}" + (f" (embedded {info['embedded']})" if info["embedded"] else "")
            + (f" (first of {info['brokers']} brokers that answered)" if info["brokers"] > 1 else "")
            + f", registry {info['db']}")
    if info["logins"]:
        made = "generated now" if info["logins_created"] else "kept"
        line += (f"\nedge-fleet: the broker requires logins ({made} in {info['logins']}, readable by you only); "
                 "give each device its own: `edge-fleet devices login ID`")
    if info["http"]:
        line += f"\nedge-fleet: console and API on {info['http']}/"
        if not info["tokens"]:
            line += " (no API tokens yet: `edge-fleet tokens create NAME --role admin`)"
    return line
