"""OTA subcommands of `edge-agent`: serve, install, rollback, status.

Each command takes (args, home) and returns (json_result, text), like the core commands.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from ..bundle import BundleError, read_manifest_unverified, sha256_file
from ..cli_types import port_number, seconds, whole_number
from ..errors import AgentError
from ..home import AgentHome, require_trust
from .credentials import BrokerCredentials, resolve_credentials
from ..monitor.watch import add_drift_arguments
from .installer import (
    InstallContext, UpdateJob, UpdateRefused, copy_side_loaded, install_lock, load_job, run_update, save_job,
)
from .phases import Event, Phase
from .protocol import DEFAULT_PREFIX, BundleRef, DesiredState, ProtocolError, check_device_id
from .slots import SlotError, Slots

log = logging.getLogger(__name__)


class UpdateFailed(AgentError, RuntimeError):
    """`edge-agent install` did not install; the previous model is still active.

    Carries the exit code of the failure that ended the job (a bundle error, a health check...)."""

    kind = "update-failed"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _profile(home: AgentHome, args: argparse.Namespace):
    from device_profiles import load_profile

    chosen = home.device_profile(getattr(args, "profile", None))
    if chosen is None:
        raise UpdateRefused("no device profile: pass --profile NAME, set EDGE_AGENT_PROFILE, or write it to the home's `profile` file")
    return load_profile(chosen)


def _slots(home: AgentHome) -> Slots:
    """The home's slots with its trusted keys (so a damaged slot.json of the active slot is rebuilt)."""
    try:
        trust = home.trust_store()
    except BundleError:  # a broken key file must not hide the status
        trust = None
    return Slots(home.slots_dir, trust)


def _budget(args: argparse.Namespace, profile) -> float | None:
    value = getattr(args, "latency_budget_ms", None)
    return value if value is not None else profile.limits.latency_budget_ms


def cmd_install(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    trust = require_trust(home.trust_store(args.trust))
    profile = _profile(home, args)
    bundle = Path(args.bundle).resolve()
    manifest = read_manifest_unverified(bundle)  # identity only: the state machine verifies everything
    size, sha = sha256_file(bundle)
    desired = DesiredState(
        deployment_id=f"local-{sha[:12]}", bundle=BundleRef(manifest.name, manifest.version, sha), size=size,
        profile=profile.name, signature={}, source={"type": "file"}, allow_downgrade=args.allow_downgrade,
    )
    slots = Slots(home.slots_dir, trust)
    active = slots.active()
    if active is not None and active.ref is not None and active.ref.sha256 == sha:
        return ({"ok": True, "changed": False, **active.to_dict()},
                f"{manifest.name} v{manifest.version} is already active in slot {active.name}")
    job = UpdateJob.for_desired(desired, origin="file", side_loaded_from=str(bundle))
    with install_lock(home, wait=False):
        job = run_update(InstallContext(home=home, trust=trust, profile_name=profile.name,
                                        latency_budget_ms=_budget(args, profile), job=job, fetch=copy_side_loaded,
                                        threads=args.threads, profile_limits=profile.limits))
    if job.phase is not Phase.SUCCEEDED:
        raise UpdateFailed(f"install failed ({job.last_error}); the previous model is still active", job.exit_code or 1)
    info = slots.info(job.target_slot or "")
    return ({"ok": True, "changed": True, **info.to_dict()},
            f"installed {manifest.name} v{manifest.version} into slot {info.name} and made it active")


def cmd_rollback(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    slots = _slots(home)
    with install_lock(home, wait=False):
        before = slots.active()
        prev = slots.rollback()
        job = load_job(home)
        if job is not None:
            job.apply(Event.OPERATOR_ROLLBACK)
            job.clear_failure()
            save_job(home, job)
    text = (f"rolled back from slot {before.name if before else '-'} to slot {prev.name} "
            f"({prev.ref.name if prev.ref else '?'} v{prev.ref.version if prev.ref else '?'})")
    return {"ok": True, **prev.to_dict()}, text


def status_dict(home: AgentHome) -> dict[str, Any]:
    slots = _slots(home)
    active, prev, job = slots.active(), slots.previous(), load_job(home)
    return {
        "active_slot": active.name if active else None,
        "model": active.ref.name if active and active.ref else None,
        "version": active.ref.version if active and active.ref else None,
        "sha256": active.ref.sha256 if active and active.ref else None,
        "previous": prev.to_dict() if prev else None,
        "phase": (job.phase if job else Phase.IDLE).value,
        "deployment_id": job.deployment_id if job else None,
        "target": {"name": job.ref.name, "version": job.ref.version} if job else None,
        "last_error": job.last_error if job else None,
        "shadow": job.shadow if job else None,
        "slots": {n: slots.info(n).to_dict() for n in ("a", "b")},
    }


def cmd_status(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    s = status_dict(home)
    lines = [
        f"active:  slot {s['active_slot'] or '-'}  {s['model'] or '(no model installed)'}"
        + (f" v{s['version']}" if s["version"] else ""),
        f"update:  {s['phase']}" + (f" ({s['target']['name']} v{s['target']['version']})" if s["target"] else "")
        + (" - in progress or interrupted" if Phase(s["phase"]).is_unfinished else ""),
    ]
    if s["last_error"]:
        lines.append(f"error:   {s['last_error']}")
    if s["shadow"] and s["shadow"]["verdict"] != "failed":  # a failed one is the error line already
        sh = s["shadow"]
        lines.append(f"shadow:  {sh['verdict']}, agreement {sh['agreement']} over {sh['frames']} frames ({sh['reason']})")
    for n, info in s["slots"].items():
        lines.append(f"slot {n}:  {info['lifecycle']:<10} {info['health']:<7} {info['name'] or ''}" + (f" v{info['version']}" if info["version"] else "")
                     + (f"  ({info['reason']})" if info["reason"] else ""))
    return s, "\n".join(lines)


def _device_id(text: str) -> str:
    """argparse type: a bad id is a usage error (2) at once, also for --check-connection (which used to log in
    with it and suggest `edge-fleet devices login ID`, which refuses that id)."""
    try:
        return check_device_id(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_serve(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    from .daemon import Agent, AgentConfig, install_signal_handlers
    from .daemon.config import AgentConfigError

    home.keep_caches_inside()
    profile = _profile(home, args)
    broker = home.broker_urls(args.broker)
    if broker is None:
        raise AgentConfigError("no broker: pass --broker mqtt://host:1883, set EDGE_AGENT_BROKER, or write the URL to "
                               "the home's `broker` file")
    trust = home.trust_store(args.trust)
    if not trust:
        log.warning("no trusted keys: every update will be refused (see `edge-agent trust add`)")
    login = resolve_credentials(BrokerCredentials(args.username, args.password, args.tls_ca), args.credentials,
                                device_id=args.device_id)
    config = AgentConfig(
        broker=broker, device_id=args.device_id, profile_name=profile.name,
        latency_budget_ms=_budget(args, profile), trust=trust, prefix=args.prefix, username=login.username,
        password=login.password, tls_ca=login.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        telemetry_interval_s=args.telemetry_interval, infer_interval_s=args.infer_interval, threads=args.threads,
        source=args.source, results=args.results, probation_s=args.probation, drift_window=args.drift_window,
        drift_threshold=args.drift_threshold, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        profile_limits=profile.limits,
    )
    config.broker_addresses()  # fail fast on a bad URL
    if args.check_connection:
        from .daemon.connection_check import check_connection

        r = check_connection(config)
        return r, f"the broker {r['broker']} accepted the login" + (f" of {r['username']}" if r["username"] else "")
    agent = Agent(home, config)
    endpoint = _start_endpoint(agent, args)
    install_signal_handlers(agent)
    try:
        agent.run()
    finally:
        if endpoint is not None:
            from ..serving import stop_serving

            stop_serving(endpoint)
    return {"ok": True, "stopped": True}, "edge-agent serve stopped"


def _start_endpoint(agent, args: argparse.Namespace):  # noqa: ANN001, ANN202 - Agent, ServingServer | None
    """With --http: serve the agent's current model to local apps, following every slot switch."""
    if args.http is None:
        return None
    from ..serving import ModelHolder, start_serving
    from ..serving.cli import announce, http_options

    policy, options = http_options(args)
    holder = ModelHolder()
    agent.loop.swap_listeners.append(holder.swap)  # the model is set when the agent boots its slot
    server = start_serving(holder, policy, options)
    agent.watch_inputs(server.service)  # served requests count as live frames for drift and shadow runs
    announce(server, args.json)
    return server



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add serve / install / rollback / status to `edge-agent`."""

    def common(p: argparse.ArgumentParser, trust: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        if trust:
            p.add_argument("--trust", action="append", type=Path, metavar="PUB",
                           help="trusted public key file or folder (repeatable); default: keys added with `trust add`")
            p.add_argument("--profile", help="this device's profile name or file, or 'auto' to detect it (default: EDGE_AGENT_PROFILE or the home's profile)")
            p.add_argument("--latency-budget-ms", type=seconds(positive=True, unit="ms"), default=None,
                           help="override the profile's latency budget for the health check")
            p.add_argument("--threads", type=whole_number(0), default=None, help="intra-op threads for the model (0: the runtime's choice)")

    p = subparsers.add_parser("serve", help="run the agent daemon: serve the model, report, apply OTA updates",
                              description="Connect to the fleet's MQTT broker, keep running inference on the active "
                              "model, publish presence/reported state/telemetry and apply desired updates safely.")
    p.add_argument("--broker", action="append", metavar="URL",
                   help="mqtt://host:1883 or mqtts://host:8883; repeat it (or give a comma list) for the nodes of a "
                   "clustered broker: the agent moves to the next one when its connection is lost. Default: "
                   "EDGE_AGENT_BROKER, else the home's `broker` file")
    p.add_argument("--device-id", required=True, type=_device_id, help="this device's id (1-64 of [A-Za-z0-9._-])")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--credentials", default=os.environ.get("EDGE_AGENT_CREDENTIALS"), metavar="FILE",
                   help="file with the MQTT login (EDGE_AGENT_MQTT_USERNAME=, EDGE_AGENT_MQTT_PASSWORD=, "
                   "EDGE_AGENT_MQTT_TLS_CA= lines; written 0600 by `edge-device setup`); default EDGE_AGENT_CREDENTIALS")
    p.add_argument("--username", help="MQTT user name (usually the device id; or EDGE_AGENT_MQTT_USERNAME)")
    p.add_argument("--password", help="MQTT password (visible in `ps`: prefer --credentials or EDGE_AGENT_MQTT_PASSWORD)")
    p.add_argument("--tls-ca", help="CA certificate file: enables TLS (or EDGE_AGENT_MQTT_TLS_CA)")
    p.add_argument("--tls-cert", help="client certificate file (TLS client authentication)")
    p.add_argument("--tls-key", help="client private key file")
    p.add_argument("--check-connection", action="store_true",
                   help="log in to the broker once as the service would, report and exit (89: login refused, "
                   "8: unreachable or TLS failed)")
    p.add_argument("--telemetry-interval", type=seconds(positive=True), default=10.0, help="seconds between telemetry messages (default 10)")
    p.add_argument("--infer-interval", type=seconds(), default=30.0,
                   help="without --source: seconds between health probes on the bundle's self-test inputs; the agent "
                   "does no other model work while idle (default 30)")
    p.add_argument("--source", help="run the current model on a camera (/dev/video0 or an index), stream URL, video "
                   "file (served in a loop) or image folder, latest frame first; needs edgekit[camera]. "
                   "Default: the bundle's self-test inputs")
    p.add_argument("--results", metavar="FILE", help="with --source: append per-frame results as JSON lines ('-' = stdout)")
    p.add_argument("--probation", type=seconds(), default=60.0, metavar="SECONDS",
                   help="after an update, watch the new model this long; if >= 3 and > 20%% of its inferences fail "
                   "on live inputs, switch back to the previous model and report rolled_back (0 = off; default 60)")
    add_drift_arguments(p)
    p.add_argument("--metrics-port", type=port_number, default=None, metavar="PORT",
                   help="serve Prometheus /metrics (drift series, process) on this port (0: any free port)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    common(p)
    from ..serving.cli import add_http_options

    add_http_options(p, required=False)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("install", help="install a side-loaded bundle with the same safe state machine",
                              description="Verify, install into the inactive slot, health-check and switch to a bundle file.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--allow-downgrade", action="store_true", help="allow a lower version than the installed one")
    common(p)
    p.set_defaults(func=cmd_install)

    p = subparsers.add_parser("rollback", help="switch back to the previous slot")
    common(p, trust=False)
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser("status", help="active slot, model, version, update phase and last error")
    common(p, trust=False)
    p.set_defaults(func=cmd_status)


__all__ = ["SlotError", "UpdateFailed", "register", "status_dict"]
