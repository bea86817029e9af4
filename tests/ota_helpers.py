"""Test-side fleet stand-in for OTA agent tests: a real MQTT peer, not a mock.

`FleetStub` publishes DesiredState and answers BlockRequests with encode_block frames read
from bundle files, and records what devices report. The fleet server (edge_fleet) can
replace it in integration tests. Also: bundle re-packing helpers and an agent subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from edge_agent.bundle import Manifest, TrustStore, read_manifest_unverified, sha256_file, verify_bundle, write_bundle
from edge_agent.ota.protocol import BundleRef, DesiredState, ProtocolError, ReportedState, Telemetry, Topics, dumps
from edge_agent.ota.block_frames import Block, BlockRequest, encode_block

REPO = Path(__file__).resolve().parents[1]
WAIT = 60.0  # generous upper bound for a network/process wait; never asserted as a duration


def wait_for(pred: Callable[[], Any], timeout: float = WAIT, what: str = "condition", interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def with_login(url: str, username: str, password: str) -> str:
    """`url` with a user name and password in it (how tests hand an agent its broker login)."""
    from urllib.parse import quote

    scheme, rest = url.split("://", 1)
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{rest}"


def wait_login_works(url: str) -> str:
    """`url` once the broker accepts its login (a fleet server picks new device logins up on its next tick)."""
    from urllib.parse import unquote, urlparse

    u = urlparse(url)

    def accepted() -> bool:
        ok = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"login-probe-{os.getpid()}")
        c.username_pw_set(unquote(u.username or ""), unquote(u.password or ""))
        c.on_connect = lambda _c, _u, _f, rc, _p: ok.set() if not rc.is_failure else None
        try:
            c.connect(u.hostname, u.port)
            c.loop_start()
            return ok.wait(2)
        finally:
            c.disconnect()
            c.loop_stop()
    wait_for(accepted, what=f"the broker to accept {u.username}'s login", interval=0.2)
    return url


def login_client(url: str, user: str | None, password: str | None, client_id: str) -> tuple[mqtt.Client, list, bool]:
    """A connected raw MQTT client: (client, [(topic, payload) received], whether the broker accepted the login)."""
    host, port = url.removeprefix("mqtt://").split(":")
    got: list = []
    acked: list[bool] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if user:
        c.username_pw_set(user, password)
    c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    c.on_connect = lambda _c, _u, _f, rc, _p: acked.append(not rc.is_failure)
    c.connect(host, int(port))
    c.loop_start()
    wait_for(lambda: acked, what=f"{client_id} CONNACK")
    return c, got, acked[0]


def bundle_signature(path: Path) -> dict[str, Any]:
    with tarfile.open(path) as tar:
        fh = tar.extractfile("signature.json")
        assert fh is not None
        return json.loads(fh.read())


def desired_for(bundle: Path, deployment_id: str, block_size: int = 16 * 1024, with_block_hashes: bool = False,
                **overrides: Any) -> DesiredState:
    m = read_manifest_unverified(bundle)
    size, sha = sha256_file(bundle)
    fields: dict[str, Any] = dict(
        deployment_id=deployment_id, bundle=BundleRef(m.name, m.version, sha), size=size, profile=m.profile,
        signature=bundle_signature(bundle), block_size=block_size,
    )
    if with_block_hashes:  # what the fleet's rollouts send (edge_fleet.rollout.desired)
        from edge_fleet.rollout.desired import block_hashes

        fields["block_hashes"] = block_hashes(bundle, sha, block_size)
    fields.update(overrides)
    return DesiredState(**fields)


def repack(src: Path, out: Path, key_path: Path, trust_pub: Path,
           manifest_edit: Callable[[Manifest], None] | None = None,
           files_edit: Callable[[dict[str, Path]], None] | None = None) -> Path:
    """Re-sign a bundle after editing its manifest and/or payload files (for negative tests)."""
    from edge_agent.bundle import load_private_key

    with tempfile.TemporaryDirectory(prefix="repack-") as folder:  # the unpacked copy is only needed to re-sign
        tmp = Path(folder)
        vb = verify_bundle(src, TrustStore.from_paths([trust_pub]), unpack_to=tmp / "u")
        manifest = vb.manifest
        files = {f.path: tmp / "u" / f.path for f in manifest.files}
        if manifest_edit:
            manifest_edit(manifest)
        if files_edit:
            files_edit(files)
        return write_bundle(out, manifest, files, load_private_key(key_path))


class FleetStub:
    """Publishes desired states and serves blocks over a real broker; records reports."""

    def __init__(self, host: str, port: int, prefix: str = "edgekit", username: str | None = None,
                 password: str | None = None) -> None:
        self.topics = Topics(prefix)
        self.files: dict[str, Path] = {}  # sha256 -> bundle file
        self.requests: list[tuple[str, list[int]]] = []
        self.served: list[int] = []
        self.reported: dict[str, list[ReportedState]] = {}
        self.telemetry: dict[str, list[Telemetry]] = {}
        self.presence: dict[str, str] = {}
        self.serve_limit: int | None = None  # stop answering after this many blocks (then record only)
        self.corrupt_once: set[int] = set()
        self.corrupt_always: set[int] = set()  # every copy of these blocks has a wrong data byte
        self.forge_once: set[int] = set()  # send other data with a matching block_sha256 first (a forged block)
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-stub-{os.getpid()}-{id(self)}")
        if username:
            self.c.username_pw_set(username, password)
        self.c.reconnect_delay_set(0.1, 1)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.loop_start()
        assert self.connected.wait(10), "fleet stub could not connect"

    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # noqa: ANN001
        client.subscribe([(self.topics.all_block_requests(), 1), (self.topics.all_reported(), 1),
                          (self.topics.all_telemetry(), 0), (self.topics.all_presence(), 1)])
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        try:
            device, kind = self.topics.parse(msg.topic)
        except ProtocolError:
            return
        try:
            if kind == "blocks/get":
                self._answer(device, BlockRequest.parse(msg.payload))
            elif kind == "reported" and msg.payload:
                with self.lock:
                    self.reported.setdefault(device, []).append(ReportedState.parse(msg.payload))
            elif kind == "telemetry":
                with self.lock:
                    self.telemetry.setdefault(device, []).append(Telemetry.parse(msg.payload))
            elif kind == "presence" and msg.payload:
                self.presence[device] = json.loads(msg.payload)["state"]
        except ProtocolError:
            pass

    def _answer(self, device: str, req: BlockRequest) -> None:
        with self.lock:
            self.requests.append((device, list(req.blocks)))
        path = self.files.get(req.sha256)
        if path is None:
            return
        size = path.stat().st_size
        total = max(1, -(-size // req.block_size))
        with open(path, "rb") as fh:
            for i in req.blocks:
                with self.lock:
                    if self.serve_limit is not None and len(self.served) >= self.serve_limit:
                        return
                    self.served.append(i)
                if i >= total:
                    continue
                fh.seek(i * req.block_size)
                data = fh.read(req.block_size)
                with self.lock:
                    forge = i in self.forge_once
                    self.forge_once.discard(i)
                if forge:
                    self.c.publish(self.topics.block_data(device),
                                   encode_block(Block(req.sha256, i, total, bytes(len(data)))), qos=1)
                frame = encode_block(Block(req.sha256, i, total, data))
                if i in self.corrupt_once or i in self.corrupt_always:
                    self.corrupt_once.discard(i)
                    frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
                self.c.publish(self.topics.block_data(device), frame, qos=1)

    # --- fleet actions ---------------------------------------------------------------------

    def offer(self, bundle: Path) -> None:
        self.files[sha256_file(bundle)[1]] = bundle

    def publish_desired(self, device: str, desired: DesiredState) -> None:
        self.c.publish(self.topics.desired(device), dumps(desired), qos=1, retain=True).wait_for_publish(10)

    def deploy(self, device: str, bundle: Path, deployment_id: str, **overrides: Any) -> DesiredState:
        self.offer(bundle)
        desired = desired_for(bundle, deployment_id, **overrides)
        self.publish_desired(device, desired)
        return desired

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def last_reported(self, device: str) -> ReportedState | None:
        with self.lock:
            items = self.reported.get(device) or []
            return items[-1] if items else None

    def last_telemetry(self, device: str) -> Telemetry | None:
        with self.lock:
            items = self.telemetry.get(device) or []
            return items[-1] if items else None

    def wait_phase(self, device: str, deployment_id: str, phases: tuple[str, ...] = ("succeeded", "failed", "rolled_back"),
                   timeout: float = WAIT) -> ReportedState:
        def done() -> ReportedState | None:
            r = self.last_reported(device)
            return r if r is not None and r.deployment_id == deployment_id and r.phase in phases else None
        return wait_for(done, timeout, f"{device} to report {deployment_id} in {phases}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class AgentProcess:
    """`edge-agent serve` as a real subprocess (so tests can kill -9 it)."""

    def __init__(self, home: Path, broker_url: str, device_id: str, trust: Path, profile: str = "raspberry-pi-4",
                 env: dict[str, str] | None = None, extra: list[str] | None = None) -> None:
        self.home = home
        self.log = home.parent / f"{home.name}-agent-{int(time.time() * 1000)}.log"
        home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "edge_agent.cli", "--home", str(home), "-v", "serve", "--broker", broker_url,
               "--device-id", device_id, "--trust", str(trust), "--profile", profile, "--threads", "1",
               "--telemetry-interval", "0.5", "--infer-interval", "0.02", *(extra or [])]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.logfh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self.logfh, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)  # a loaded CI host; a part slow to stop is named in the log
            except subprocess.TimeoutExpired:  # leave in its log where each thread was (the agent's SIGUSR1)
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(5)
        self.logfh.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()

    def paused_at(self) -> str | None:
        marker = self.home / "ota" / "paused-at"
        return marker.read_text() if marker.exists() else None
