"""`edge-device flash`: verify a bundle here against the device's keys, push it, verify it there, install it
A/B, health-check, bench on the device.

The copy is atomic and resumable (ssh.Device.push); the install is the device's own
`edge-agent install`, i.e. the same state machine as an OTA update, so a bundle that fails its
checks leaves the previous model active. A device in the middle of an update is left alone (85).
"""

from __future__ import annotations

import asyncio
import os
import shlex
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from edge_agent.bundle import TrustStore, read_manifest_unverified, sha256_file, verify_bundle
from edge_agent.bundle.errors import BundleError, InsufficientSpace, ProfileMismatch, SignatureError
from edge_agent.errors import EdgekitError
from edge_agent.ota.phases import Phase

from .layout import Layout
from .remote import RemoteAgent
from .ssh import Device, RemoteCommandFailed

Progress = Callable[[str], None]
LOCK_BUSY = 75  # flock -E: another flash holds the device's lock
LOCK_STALE_S, HEARTBEAT_S = 120.0, 10.0  # the lock is let go after this long without a line from the host
LOCK_STALE_ENV = "EDGEKIT_TEST_LOCK_STALE_S"  # test hook: a shorter LOCK_STALE_S


class DeviceBusy(EdgekitError):
    code_name = "busy"


class DowngradeRefused(EdgekitError):
    code_name = "downgrade"


def _check_downgrade(name: str, status: dict[str, Any], manifest: Any, sha: str, allowed: bool) -> None:
    """The device's own check, made here before the push and with the flag this tool has: an operator flashing
    the older version back got "the fleet must mark it a rollback", after the copy, with no fleet and no option."""
    if allowed or status.get("model") != manifest.name or status.get("version") is None:
        return
    have = int(status["version"])
    if manifest.version < have or (manifest.version == have and status.get("sha256") != sha):
        what = "an older version" if manifest.version < have else "the same version with other content"
        raise DowngradeRefused(f"{name}: {manifest.name} v{have} is active and this bundle is v{manifest.version}, "
                               f"{what} (not pushed): pass --allow-downgrade to flash it anyway")


def _check_profile(name: str, bundle: Path, built_for: str, device_profile: str) -> None:
    """The device's profile check (17), made here before the push: another profile's bundle was copied whole and then
    refused on the device, whose message offered --allow-profile-mismatch, which install (and so flash) lacks."""
    if device_profile and built_for != device_profile:
        raise ProfileMismatch(f"{name}: {bundle.name} was built for profile '{built_for}' but this device is "
                              f"'{device_profile}' (not pushed): convert the model for profile '{device_profile}'")


async def _device_profile(ra: RemoteAgent, user: str) -> str | None:
    """The profile the device's install checks against: the name in its home's `profile` file when it is a built-in
    one (what setup writes); None for a profile file the operator put there, whose name only the device reads."""
    from device_profiles import list_profiles

    r = await ra.device.run(ra.as_user(user, f"cat {shlex.quote(ra.layout.home)}/profile 2>/dev/null"))
    chosen = r.stdout.strip() if r.exit_status == 0 else ""
    return chosen if chosen in list_profiles() else None


def _host_figures(manifest_measurements: dict[str, Any]) -> dict[str, Any] | None:
    converted = (manifest_measurements.get("host_latency") or {}).get("converted")
    if not converted:
        return None
    return {"p50_ms": converted.get("p50_ms"), "p99_ms": converted.get("p99_ms")}


async def _uid(device: Device) -> int:
    return int((await device.run("id -u")).stdout.strip() or -1)


@asynccontextmanager
async def flash_lock(device: Device, layout: Layout) -> AsyncIterator[None]:
    """One flash at a time per device: two (two operators, or two inventories naming one board) shared the
    incoming copy and one removed the other's file mid-install ("error: No such file"). The lock is a
    `flock` held by a process on the device that lives as long as this SSH session, so a killed host
    releases it; a device without flock(1) is flashed unlocked, as before. A dropped link (Wi-Fi gone, host
    suspended) closes nothing: sshd keeps the session until TCP keepalive gives up, about two hours, and
    every flash meanwhile was "busy". So the holder also needs a line from this host every HEARTBEAT_S and
    lets go after `stale_s` without one (`timeout` from coreutils; without it, only the session's end)."""
    lock, q = f"{layout.incoming}/.flash.lock", shlex.quote
    stale_s = float(os.environ.get(LOCK_STALE_ENV, "") or LOCK_STALE_S)
    hold = (f"echo locked; if command -v timeout >/dev/null 2>&1; then while timeout {stale_s:g} sh -c 'IFS= read -r x'; "
            f"do :; done; else exec cat >/dev/null; fi")
    proc = await device.conn.create_process(
        f"command -v flock >/dev/null 2>&1 || {{ echo nolock; exec cat >/dev/null; }}; mkdir -p {q(layout.incoming)} "
        f"&& exec flock -n -E {LOCK_BUSY} {q(lock)} sh -c {q(hold)}")
    beat: asyncio.Task[None] | None = None
    try:
        line = "-"
        while line and line not in ("locked", "nolock"):  # past what a chatty shell rc file printed first
            line = str(await proc.stdout.readline()).strip() if not proc.stdout.at_eof() else ""
        if not line:
            res = await proc.wait()
            if res.exit_status == LOCK_BUSY:
                raise DeviceBusy(f"{device.target.name}: another edge-device flash is running on this device "
                                 f"(lock {lock}): try again when it ends")
            raise RemoteCommandFailed(f"{device.target.name}: cannot lock {lock}: "
                                      f"{str(res.stderr or '').strip() or f'exit {res.exit_status}'}")
        beat = asyncio.create_task(_heartbeat(proc, min(HEARTBEAT_S, stale_s / 4)))
        yield
    finally:
        if beat is not None:
            beat.cancel()
        proc.stdin.write_eof()
        proc.close()


async def _heartbeat(proc: Any, every_s: float) -> None:
    """Tell the device's lock holder this host is still there (see flash_lock)."""
    while not proc.stdin.is_closing():
        proc.stdin.write("\n")
        await asyncio.sleep(every_s)


async def flash(device: Device, layout: Layout, bundle: Path, runs: int = 50,
                say: Progress = lambda s: None, allow_downgrade: bool = False) -> dict[str, Any]:
    """Flash `bundle` holding the device's flash lock (see flash_lock)."""
    async with flash_lock(device, layout):
        return await _flash(device, layout, bundle, runs, say, allow_downgrade)


async def _flash(device: Device, layout: Layout, bundle: Path, runs: int, say: Progress,
                 allow_downgrade: bool) -> dict[str, Any]:
    name, q = device.target.name, shlex.quote
    manifest = read_manifest_unverified(bundle)
    size, sha = sha256_file(bundle)
    ra = RemoteAgent(device, layout, await _uid(device))
    cfg = await ra.config()
    status = await ra.agent(cfg.user, "status")
    if status.get("active_slot") and status.get("sha256") == sha:
        say(f"{manifest.name} v{manifest.version} is already active")
    if Phase(status["phase"]).is_unfinished:
        raise DeviceBusy(f"{name}: the agent is in the middle of an update ({status['phase']}, "
                         f"{(status.get('target') or {}).get('name', '?')}): try again when it ends")
    await _verify_here(ra, cfg.user, bundle)
    device_profile = await _device_profile(ra, cfg.user)
    if device_profile is not None:
        _check_profile(name, bundle, manifest.profile, device_profile)
    if manifest.profile == (device_profile or cfg.profile):  # another profile's: the device refuses it first (17)
        _check_downgrade(name, status, manifest, sha, allow_downgrade)
    await _drop_stale_copies(ra, f"{sha[:16]}.edgebundle.part", say)
    free_kb = await device.free_kb(layout.incoming)
    # the pushed file, staging and the unpacked slot; a full disk is 0 (it was skipped, then failed as 84 "resume")
    if free_kb is not None and free_kb * 1024 < 3 * size + 1_000_000:
        raise InsufficientSpace(f"{name}: {free_kb // 1024} MB free under {layout.incoming}, flashing a "
                                f"{size / 1e6:.1f} MB bundle needs about {(3 * size + 1_000_000) / 1e6:.0f} MB: free some space")
    remote = f"{layout.incoming}/{sha[:16]}.edgebundle"
    say(f"pushing {bundle.name} ({size / 1e6:.2f} MB)")
    resumed = await device.push(bundle, remote)
    if resumed:
        say(f"resumed an interrupted copy at {resumed} bytes")
    try:
        await device.run(ra.as_root(f"chown {q(cfg.user)} {q(remote)}"))
        verified = await ra.agent(cfg.user, "verify", remote)
        say(f"verified on the device: signed by {verified['signed_by']}")
        installed = await ra.agent(cfg.user, "install", remote, *(("--allow-downgrade",) if allow_downgrade else ()))
        say(f"installed into slot {installed.get('slot', '?')}" if installed.get("changed", True) else  # was the model's
            f"already active in slot {installed.get('slot', '?')}: nothing installed")  # name, "slot digits"
        bench = await ra.agent(cfg.user, "bench", remote, "--runs", str(runs), "--warmup", "5", timeout=1800)
    finally:
        await device.run(f"rm -f {q(remote)}")
    lat = bench.get("latency") or {}
    device_fig = {"p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms")}
    after = await ra.agent(cfg.user, "status")
    return {"device": name, "ok": True, "bundle": manifest.name, "version": manifest.version, "sha256": sha,
            "changed": installed.get("changed", True), "active_slot": after.get("active_slot"),
            "device_latency": device_fig, "host_latency": _host_figures(manifest.measurements),
            "provider": bench.get("provider"), "runtime": bench.get("runtime"),
            "resumed_from": resumed, "service_running": await ra.running(cfg)}


async def _drop_stale_copies(ra: RemoteAgent, keep: str, say: Progress) -> None:
    """Bundles earlier flashes left in incoming/ (the host killed after the copy, or a .part of another bundle) were
    never removed: each interrupted flash kept a full bundle on the device's disk for good, until "free some space"
    (18) with nothing the operator knew to free. We hold the flash lock: no other flash is using them. This bundle's
    own .part stays, to be resumed."""
    r = await ra.device.run(ra.as_root(
        f"cd {shlex.quote(ra.layout.incoming)} && for f in *.edgebundle *.edgebundle.part; do "
        f"[ -f \"$f\" ] && [ \"$f\" != {shlex.quote(keep)} ] && rm -f -- \"$f\" && echo \"$f\"; done; true"))
    if gone := r.stdout.split():
        say(f"removed {len(gone)} copies left by interrupted flashes: {', '.join(gone)}")


async def _verify_here(ra: RemoteAgent, user: str, bundle: Path) -> None:
    """Verify the bundle on the host against the keys the device trusts, before a byte is pushed: a corrupt, altered
    or untrusted bundle was copied to the device first and refused there by its own `edge-agent verify`. The device
    still verifies what it gets (it decides); this only keeps a bad bundle on the host. Same typed errors, codes
    10-16, one line (the profile is checked next: _check_profile)."""
    trusted = f"{ra.layout.home}/trusted"
    r = await ra.device.run(ra.as_user(user, f"cat {shlex.quote(trusted)}/*.pub 2>/dev/null"))
    try:
        trust = TrustStore.from_pem_text(r.stdout, f"{ra.name}:{trusted}")
        if not trust:
            raise SignatureError(f"the device trusts no signing key ({trusted} is empty): run `edge-device setup "
                                 "--trust signing.pub` again")
        await asyncio.to_thread(verify_bundle, bundle, trust)
    except BundleError as exc:
        raise type(exc)(f"{ra.name}: {bundle.name}: {exc} (not pushed)") from None


async def status(device: Device, layout: Layout) -> dict[str, Any]:
    ra = RemoteAgent(device, layout, await _uid(device))
    cfg = await ra.config()
    st = await ra.agent(cfg.user, "status")
    return {"device": device.target.name, "ok": True, "running": await ra.running(cfg), "systemd": cfg.systemd,
            "profile": cfg.profile, "model": st.get("model"), "version": st.get("version"),
            "active_slot": st.get("active_slot"), "phase": st.get("phase"), "last_error": st.get("last_error")}
