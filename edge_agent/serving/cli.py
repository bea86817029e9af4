"""`edge-agent serve-model BUNDLE --http PORT`, and the `--http` options `edge-agent serve` shares."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from ..cli_types import port_number, seconds, whole_number
from ..errors import AgentError
from ..home import AgentHome, unpacked_bundle
from .batcher import BatchPolicy
from .holder import ModelHolder, ServedModel
from .server import MB, HttpOptions, ServingServer

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_AGENT_SERVE_TOKEN"


class ServeOptionError(AgentError, ValueError):
    code_name = "usage"
    kind = "serve-options"


def add_http_options(p: argparse.ArgumentParser, required: bool) -> None:
    """The endpoint's options, for `serve-model` (port required) and `serve` (endpoint off unless --http)."""
    g = p.add_argument_group("inference endpoint (KServe v2 under /v2, TF Serving REST under /v1, /metrics)")
    g.add_argument("--http", type=port_number, required=required, metavar="PORT",
                   help="serve the model to local apps on this port (0 = any free port, printed at start)")
    g.add_argument("--http-host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this device only; 0.0.0.0 exposes it to the network)")
    g.add_argument("--http-token-file", type=Path, metavar="FILE",
                   help=f"require `Authorization: Bearer TOKEN` with the token in FILE (or set {TOKEN_ENV})")
    g.add_argument("--max-batch", type=int, default=8, help="rows per model run when the model has a dynamic batch axis (default 8)")
    mb = seconds(positive=True, unit="MB")  # finite and > 0: inf was int()'s 'cannot convert float infinity', exit 1
    g.add_argument("--max-delay-ms", type=seconds(unit="ms"), default=2.0,
                   help="how long a request waits to be batched (default 2 ms)")
    g.add_argument("--queue-size", type=int, default=64, help="requests that may wait; more get 503 (default 64)")
    g.add_argument("--workers", type=int, default=1, help="threads running the model (default 1)")
    g.add_argument("--max-json-mb", type=mb, default=8.0, help="largest JSON body in MB (default 8)")
    g.add_argument("--max-body-mb", type=mb, default=64.0,
                   help="largest body with binary tensors or an image in MB (default 64)")
    g.add_argument("--max-connections", type=int, default=HttpOptions.max_connections,
                   help=f"open connections (a thread each); one more gets 503 (default {HttpOptions.max_connections})")


def http_options(args: argparse.Namespace) -> tuple[BatchPolicy, HttpOptions]:
    """The batcher policy and HTTP options the command line asks for (one-line error when invalid)."""
    for name in ("max_batch", "queue_size", "workers", "max_connections"):
        if getattr(args, name) < 1:
            raise ServeOptionError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.max_delay_ms >= 0 or not args.max_json_mb > 0 or not args.max_body_mb > 0:
        raise ServeOptionError("--max-delay-ms must be >= 0 and --max-json-mb/--max-body-mb > 0")
    token = os.environ.get(TOKEN_ENV) or None
    if args.http_token_file is not None:
        try:
            token = args.http_token_file.read_text().strip()
        except OSError as exc:
            raise ServeOptionError(f"cannot read --http-token-file {args.http_token_file}: {exc.strerror}") from None
        if not token:
            raise ServeOptionError(f"--http-token-file {args.http_token_file} is empty")
    if token is not None and not (token.isascii() and token.isprintable()):  # RFC 6750's token68 is ASCII
        source = f"--http-token-file {args.http_token_file}" if args.http_token_file else TOKEN_ENV
        raise ServeOptionError(f"the token in {source} must be printable ASCII: a client's header cannot carry "
                               "other characters, so no request would ever match it")
    policy = BatchPolicy(args.max_batch, args.max_delay_ms, args.queue_size, args.workers)
    options = HttpOptions(args.http_host, args.http, token, int(args.max_json_mb * MB), int(args.max_body_mb * MB),
                          max_connections=args.max_connections)
    return policy, options


def announce(server: ServingServer, json_mode: bool) -> None:
    """One line on stdout once the endpoint listens (with port 0, how a script learns the port)."""
    model = server.service.holder.current
    info = {"url": server.url, "model": model.manifest.name if model else None,
            "version": model.manifest.version if model else None}
    print(json.dumps(info) if json_mode else f"serving on {server.url}", flush=True)


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def cmd_serve_model(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    from ..cli import _profile_name
    from ..runtimes import load_session
    from . import start_serving, stop_serving

    policy, options = http_options(args)
    trust = home.trust_store(args.trust)
    with unpacked_bundle(args.bundle, trust, _profile_name(home, args), args.allow_profile_mismatch) as vb:
        session = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        holder = ModelHolder(ServedModel(vb.manifest, session))
        server = start_serving(holder, policy, options)
        try:
            announce(server, args.json)
            wait_for_signal()
        finally:
            stats = server.stats.snapshot()
            stop_serving(server)
            session.close()
    served = sum(r["count"] for r in stats["requests"])
    return {"ok": True, "stopped": True, "requests": served, "errors": stats["errors"]}, \
        f"edge-agent serve-model stopped after {served} requests ({stats['errors']} errors)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve-model", help="serve one bundle to local apps over KServe v2 and TF Serving REST (no fleet)",
        description="Verify BUNDLE, load it, and answer KServe v2 (/v2/models/NAME/infer, binary tensors included; "
        "what tritonclient speaks) and TF Serving REST (/v1/models/NAME:predict) requests until SIGTERM/Ctrl-C. "
        "Tensors are given in the source model's layout (as .npy files to `edge-agent run`); encoded images "
        "(an image/* body, a BYTES input or {\"b64\": ...}) get the bundle's preprocessing and the CLI's answer. "
        "Prints `serving on URL` (with --json a JSON line) once listening. Under a fleet use `edge-agent serve --http PORT`.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--threads", type=whole_number(0), default=None, help="intra-op threads (default: runtime's choice)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (ready line, final summary)")
    p.add_argument("--trust", action="append", type=Path, metavar="PUB",
                   help="trusted public key file or folder of *.pub (repeatable); default: keys added with `trust add`")
    p.add_argument("--profile", help="this device's profile name or file (default: EDGE_AGENT_PROFILE or the home's profile)")
    p.add_argument("--allow-profile-mismatch", action="store_true", help="accept a bundle built for another profile")
    add_http_options(p, required=True)
    p.set_defaults(func=cmd_serve_model)


__all__ = ["add_http_options", "announce", "http_options", "register", "TOKEN_ENV"]
