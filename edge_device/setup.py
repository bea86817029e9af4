"""`edge-device setup`: from a bare board to `edge-agent serve` running as a service.

probe -> checks (Python, profile, disk) -> wheelhouse pushed (or the device's own index) -> venv
-> trust keys (public keys only) -> profile -> service user -> systemd unit -> start -> running?
Re-running it is safe: what is already there is kept (wheels of the same size are not re-sent).
"""

from __future__ import annotations

import re
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from device_profiles.facts import BoardFacts
from edge_agent import __version__
from edge_agent.bundle import load_public_key
from edge_agent.bundle.errors import InsufficientSpace
from edge_agent.errors import EdgekitError, exit_code

from .layout import Layout, render_unit, serve_args
from .login import DeviceLogin, LoginOptionError
from .probe import probe
from .remote import RemoteAgent, ServiceConfig
from .ssh import Device, RemoteCommandFailed, sudo_problem
from .wheelhouse import Wheelhouse, build_wheelhouse

Progress = Callable[[str], None]
VENV_MB = 450  # room a venv with onnxruntime + LiteRT + numpy takes, plus its wheelhouse


class SetupFailed(EdgekitError):
    code_name = "setup-failed"


class NotAPublicKey(EdgekitError):
    code_name = "usage"


@dataclass
class SetupOptions:
    broker: str
    trust: list[Path]
    device_id: str | None = None
    profile: str | None = None
    python: str | None = None
    index_url: str | None = None
    service_user: str = "edgekit"
    keep_system_onnxruntime: bool | None = None  # None: yes on a Jetson (JetPack's onnxruntime-gpu)
    serve_args: tuple[str, ...] = field(default_factory=tuple)
    login: DeviceLogin | None = None  # the broker login and CA (edge_device.login); None: keep what the device has


def check_public_keys(paths: list[Path]) -> None:
    """Only public keys ever leave the host: a private key (or anything else) is refused here."""
    for p in paths:
        try:
            load_public_key(p)
        except Exception as exc:  # noqa: BLE001 - any failure means it is not a usable public key
            raise NotAPublicKey(f"--trust {p}: not an Ed25519 public key ({exc}); private keys are never pushed") from exc


def keeps_system_onnxruntime(facts: BoardFacts, forced: bool | None = None) -> bool:
    """On a Jetson (an L4T release found) JetPack's onnxruntime-gpu stays: the wheelhouse's CPU-only
    onnxruntime would replace TensorRT and CUDA. `forced` (--[no-]keep-system-onnxruntime) wins."""
    return forced if forced is not None else bool(facts.l4t)


def _device_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name.split("@")[-1])[:64]


def _agent_requirements(edgekit_wheel: Path, skip: tuple[str, ...]) -> list[str]:
    """The agent extra's requirements from the wheel's METADATA, minus `skip` (kept from the system)."""
    with zipfile.ZipFile(edgekit_wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line.split(":", 1)[1].strip().partition(";")
        if marker and "extra ==" in marker and '"agent"' not in marker:
            continue
        name = re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower()
        if name not in skip and name != "edgekit":
            cleaned = re.sub(r'(and )?extra == "agent"', "", marker).strip()
            reqs.append(req.strip() + (f"; {cleaned}" if cleaned and cleaned != "and" else ""))
    return reqs


async def _push_wheelhouse(device: Device, wh: Wheelhouse, layout: Layout, say: Progress) -> None:
    listing = await device.run(f"cd {shlex.quote(layout.wheelhouse)} 2>/dev/null && ls -l")
    have = {parts[-1]: int(parts[4]) for parts in (ln.split() for ln in listing.stdout.splitlines()) if len(parts) >= 9}
    todo = [f for f in wh.files if f.name.startswith("edgekit-") or have.get(f.name) != f.stat().st_size]
    say(f"wheelhouse: {len(wh.files)} wheels, {wh.size_bytes / 1e6:.1f} MB; sending {len(todo)}")
    for f in todo:
        await device.push(f, f"{layout.wheelhouse}/{f.name}")


async def _install_venv(ra: RemoteAgent, python: str, opts: SetupOptions, wh: Wheelhouse | None, keep_ort: bool,
                        say: Progress) -> None:
    lay, q = ra.layout, shlex.quote
    site = " --system-site-packages" if keep_ort else ""
    if wh is None:  # the device's own index
        await ra.device.run(ra.as_root(f"[ -x {q(lay.python)} ] || {q(python)} -m venv{site} {q(lay.venv)}"), check=True)
        pip = f"{q(lay.python)} -m pip install --quiet --index-url {q(opts.index_url or '')}"
        spec = f"edgekit[agent]=={__version__}"
    else:
        bootstrap = f"{q(lay.wheelhouse)}/{wh.pip_wheel().name}/pip"
        await ra.device.run(ra.as_root(
            f"[ -x {q(lay.python)} ] || {q(python)} -m venv --without-pip{site} {q(lay.venv)}; "
            f"[ -x {q(lay.venv)}/bin/pip ] || {q(lay.python)} {bootstrap} install --quiet --no-index "
            f"--find-links {q(lay.wheelhouse)} pip"), check=True)
        pip = f"{q(lay.python)} -m pip install --quiet --no-index --find-links {q(lay.wheelhouse)}"
        spec = "edgekit[agent]"
    if keep_ort:
        say("keeping the system's onnxruntime (JetPack): installing the other agent dependencies")
        wheel = next(f for f in wh.files if f.name.startswith("edgekit-")) if wh else None
        reqs = _agent_requirements(wheel, ("onnxruntime", "onnxruntime-gpu", "numpy")) if wheel else []
        cmd = f"{pip} --no-deps --force-reinstall {q(spec.split('[')[0] if wh else spec)} && {pip} " + " ".join(q(r) for r in reqs)
    else:
        cmd = f"{pip} --force-reinstall --no-deps {q(spec)} && {pip} {q(spec)}"
    r = await ra.device.run(ra.as_root(cmd), timeout=1800)
    if r.exit_status != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "pip failed").splitlines()[-1]
        raise SetupFailed(f"{ra.name}: installing the agent failed: {last}", detail=r.stderr)


def _builtin_profile_only(name: str, given: str | None) -> None:
    """Setup writes a profile NAME on the device; a user's profile file is not copied there, so the agent would
    not find it (its name matches no built-in) or would take the built-in of that name, with its limits."""
    from device_profiles import ProfileError, list_profiles, load_profile

    if given and given not in list_profiles():
        prof = load_profile(given)  # an unknown name or a bad file is refused as it is
        raise ProfileError(f"{name}: setup installs built-in profiles only ({', '.join(list_profiles())}) and does not "
                           f"copy the profile file {given} (profile {prof.name!r}) to the device: set up with the "
                           "closest built-in, then copy your file to the device and write its path to the agent "
                           "home's `profile` file")


async def setup(device: Device, layout: Layout, opts: SetupOptions, say: Progress = lambda s: None) -> dict[str, Any]:
    check_public_keys(opts.trust)
    name, q = device.target.name, shlex.quote
    _builtin_profile_only(name, opts.profile or device.target.profile)
    p = await probe(device, layout, opts.python)
    python = p.require_python(name, opts.python)
    profile = p.require_profile(name, opts.profile or device.target.profile)
    say(p.match.line(p.facts) if not opts.profile else f"profile {profile} (given)")
    ra = RemoteAgent(device, layout, p.uid)
    from device_profiles import load_profile

    prof = load_profile(profile)
    await _check_writable(ra, layout)  # first: "free some space" on a read-only disk sent the operator astray
    _check_room(name, p.facts.disk_free_mb, VENV_MB, layout)  # before minutes of wheelhouse building
    wh = None
    if not opts.index_url:
        say(f"building the wheelhouse for Python {p.facts.python_version} on {p.facts.arch}")
        wh = build_wheelhouse(p.facts.python_version, p.facts.arch, p.facts.glibc)
        _check_room(name, p.facts.disk_free_mb, max(VENV_MB, 4 * wh.size_bytes // 1_000_000), layout)
    user = opts.service_user
    await device.run(ra.as_root(f"mkdir -p {q(layout.wheelhouse)} {q(layout.home)} {q(layout.incoming)}"), check=True)
    if wh is not None:
        await _push_wheelhouse(device, wh, layout, say)
    keep_ort = keeps_system_onnxruntime(p.facts, opts.keep_system_onnxruntime)
    await _service_user(ra, user, python)
    say("installing the agent into " + layout.venv)
    await _install_venv(ra, python, opts, wh, keep_ort, say)
    for pub in opts.trust:
        await device.push(pub, f"{layout.incoming}/{pub.name}")
    await device.run(ra.as_root(f"printf '%s\\n' {q(profile)} > {q(layout.home)}/profile; chown -R {q(user)} "
                                f"{q(layout.home)} {q(layout.incoming)}"), check=True)
    for pub in opts.trust:
        await ra.agent(user, "trust", "add", f"{layout.incoming}/{pub.name}")
    cfg = ServiceConfig(broker=opts.broker, device_id=_chosen_device_id(opts, name), profile=profile, user=user,
                        systemd=await ra.has_systemd(), version=__version__)
    extra = opts.serve_args
    broker = await _install_login(ra, cfg, opts.login, say)
    if broker["credentials"]:
        extra = (*extra, "--credentials", layout.credentials)
    unit = render_unit(layout, user, cfg.broker, cfg.device_id, prof.limits.memory_budget_mb, bool(p.facts.cameras),
                       extra)
    await device.run(ra.as_root(f"mkdir -p {q(layout.unit_dir)} && cat > {q(layout.unit_file)}"), check=True, stdin=unit)
    await ra.write_config(cfg)
    say("starting the service" + ("" if cfg.systemd else " (no systemd running: started its ExecStart detached)"))
    await ra.start(cfg, layout.agent_cmd(*serve_args(cfg.broker, cfg.device_id, extra)))
    running = await ra.running(cfg, settle_s=3.0)
    if not running:
        tail = await device.run(f"tail -n 5 {q(layout.log_file)} 2>/dev/null || journalctl -u edge-agent -n 5")
        last = (tail.stdout.strip().splitlines() or ["no log"])[-1]
        raise RemoteCommandFailed(f"{name}: the agent service did not stay up: {last}", exit_code("runtime"))
    version = (await device.run(f"{q(layout.agent)} --version")).stdout.strip()
    return {"device": name, "ok": True, "profile": profile, "reason": p.match.reason, "python": p.facts.python_version,
            "agent": version, "unit": layout.unit_file, "systemd": cfg.systemd, "running": running,
            "device_id": cfg.device_id, "wheelhouse_mb": round(wh.size_bytes / 1e6, 1) if wh else None,
            "wheels": len(wh.files) if wh else None, "kept_system_onnxruntime": keep_ort, "broker": broker}


async def _check_writable(ra: RemoteAgent, layout: Layout) -> None:
    """An unwritable --remote-dir (a read-only file system, a folder even root may not write) failed as `mkdir` with
    1, "other error", though its line was clear: it is setup failing (87), found before anything is built or sent.
    The test writes an empty file in the nearest folder that exists (`test -w` is true for root on some shells);
    a full disk is left to the room check (18)."""
    q = shlex.quote
    r = await ra.device.run(ra.as_root(
        f"d={q(layout.root)}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; t=\"$d/.edgekit-write-test.$$\"; "
        f"if : > \"$t\"; then rm -f \"$t\"; else echo \"$d\"; exit 1; fi"))
    if r.exit_status == 0 or "No space left" in r.stderr:
        return
    if hint := sudo_problem(ra.device.target, r.stderr):
        raise RemoteCommandFailed(hint, 1, r.stderr)
    why = r.stderr.strip().splitlines()[-1].rsplit(":", 1)[-1].strip() if r.stderr.strip() else "not writable"
    raise SetupFailed(f"{ra.name}: cannot write under {r.stdout.strip() or layout.root} ({why}): pass a --remote-dir "
                      "on a writable disk", detail=r.stderr)


def _check_room(name: str, free_mb: int | None, need_mb: int, layout: Layout) -> None:
    """A full disk reads 0 MB free (it was taken for "unknown" and the install went on into the full disk)."""
    if free_mb is not None and free_mb < need_mb:
        raise InsufficientSpace(f"{name}: {free_mb} MB free under {layout.root}, the agent needs about {need_mb} MB: "
                                "free some space or pass --remote-dir on a larger disk")


async def _service_user(ra: RemoteAgent, user: str, python: str) -> None:
    """Create the service user (through sudo when the SSH login is not root) and check it can run `python`:
    an interpreter under a private folder (pyenv in /root, say) would leave a venv the service cannot start."""
    q = shlex.quote
    if user != "root" and (await ra.device.run(f"id -u {q(user)}")).exit_status != 0:
        await ra.device.run(ra.as_root(f"useradd --system --no-create-home --home-dir {q(ra.layout.home)} "
                                       f"--shell /usr/sbin/nologin {q(user)}"), check=True)
    r = await ra.device.run(ra.as_user(user, f"{q(python)} -c pass"))
    if r.exit_status != 0:
        last = (r.stderr.strip() or f"exit {r.exit_status}").splitlines()[-1]
        raise SetupFailed(f"{ra.name}: the service user {user} cannot run {python} ({last}): pass --python with an "
                          "interpreter it can read, e.g. /usr/bin/python3")


def _chosen_device_id(opts: SetupOptions, name: str) -> str:
    login_for = opts.login.device_id if opts.login else None
    if login_for and opts.device_id and login_for != opts.device_id:
        raise LoginOptionError(f"the fleet login is for device {login_for!r}, not --device-id {opts.device_id!r}")
    return opts.device_id or login_for or _device_id(name)


async def _install_login(ra: RemoteAgent, cfg: ServiceConfig, login: DeviceLogin | None, say: Progress) -> dict[str, Any]:
    """Write the broker login (0600, the service user's) and check it the way the service will log in.

    The new file is checked under a temporary name and only then replaces the old one, so a refused
    login (exit 89) leaves the running service and its working login as they were. An unreachable
    broker is only a warning: devices are often set up away from the fleet's network."""
    lay, q, user = ra.layout, shlex.quote, cfg.user
    path: str | None = None
    if login is None:
        if (await ra.device.run(f"test -f {q(lay.credentials)}")).exit_status == 0:
            path = lay.credentials  # set up before: keep the login the device has
    else:
        if login.tls_ca is not None:
            await ra.device.push(login.tls_ca, lay.broker_ca)
        creds = login.credentials(lay.broker_ca)
        if creds.password is not None and creds.username is None:  # the fleet's convention: user name = device id
            creds = type(creds)(cfg.device_id, creds.password, creds.tls_ca)
        path = lay.credentials + ".new"
        await ra.device.run(ra.as_root(f"umask 077 && cat > {q(path)} && chown {q(user)} {q(path)} && "
                                       f"chmod 600 {q(path)}" + (f" && chown {q(user)} {q(lay.broker_ca)}"
                                                                 if login.tls_ca else "")),
                            check=True, stdin=creds.render())
    try:
        await ra.agent(user, "serve", "--broker", cfg.broker, "--device-id", cfg.device_id, "--profile", cfg.profile,
                       *(("--credentials", path) if path else ()), "--check-connection", timeout=60)
        check = "accepted"
        say(f"broker {cfg.broker}: login accepted")
    except RemoteCommandFailed as exc:
        if exc.exit_code != exit_code("connection-failed") or "TLS" in str(exc):
            await ra.device.run(ra.as_root(f"rm -f {q(lay.credentials)}.new"))
            raise
        check = "unreachable"
        say(f"warning: {exc} (the service keeps trying)")
    if path and path != lay.credentials:
        await ra.device.run(ra.as_root(f"mv -f {q(path)} {q(lay.credentials)}"), check=True)
    return {"credentials": lay.credentials if path else None, "check": check}
