"""A simulated edge device for fleet tests and benchmarks: a real paho-mqtt client that speaks
the OTA protocol (edge_agent.ota.protocol) without running a model.

It announces presence (with a retained last will "offline"), reports its state, follows its
desired state by downloading the bundle in blocks through the fleet's block server, checks
the reassembled file's SHA-256, and "switches" to it. It can be told to fail an update
(`fail="reason"`) or to stay silent (`silent=True`), and `kill()` drops its TCP connection
without a DISCONNECT so the broker publishes the last will.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import urllib.request
from typing import Callable

import paho.mqtt.client as mqtt

from edge_agent.ota.block_frames import BlockRequest, decode_block
from edge_agent.ota.protocol import (
    MAX_BLOCKS_PER_REQUEST, BundleRef, DesiredState, Presence, ProtocolError, ReportedState, Telemetry, Topics, dumps,
)
from edge_agent.ota.report_order import ReportSequence

log = logging.getLogger("fleet_sim")


class SimDevice:
    def __init__(self, host: str, port: int, device_id: str, profile: str = "raspberry-pi-4",
                 current: BundleRef | None = None, prefix: str = "edgekit", fail: str | None = None,
                 silent: bool = False, window: int = MAX_BLOCKS_PER_REQUEST, undo_after_s: float | None = None,
                 keep_files: bool = True, login: tuple[str, str] | None = None, numbered: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.host, self.port, self.id, self.profile = host, port, device_id, profile
        self.topics = Topics(prefix)
        self.current, self.previous = current, None
        self.fail, self.silent, self.window = fail, silent, window
        self.undo_after_s = undo_after_s  # like the agent's probation: switch back this long after succeeding
        self.keep_files = keep_files  # False: a benchmark's 1,000 devices do not each keep the bundle in memory
        self.sequence = ReportSequence() if numbered else None  # None: an agent from before (boot_id, seq)
        self.clock = clock  # the device's wall clock (updated_at); a test may step it back
        self.phase = "idle"
        self.deployment_id: str | None = None
        self.last_error: str | None = None
        self.files: dict[str, bytes] = {}  # sha256 -> reassembled bundle bytes
        self.history: list[tuple[str, str | None]] = []  # (phase, target sha)
        self.ignored = 0
        self._want: DesiredState | None = None
        self._blocks: dict[int, bytes] = {}
        self._next = 0
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.will_set(self.topics.presence(device_id), dumps(Presence("offline")), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._connected = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "SimDevice":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"{self.id}: no CONNACK")
        return self

    def stop(self) -> None:
        self._connected.clear()
        self.client.publish(self.topics.presence(self.id), dumps(Presence("offline")), qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT (like a power cut): the broker sends the will."""
        sock = self.client.socket()
        self.client.loop_stop()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    # -- protocol ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(self.topics.desired(self.id), 1), (self.topics.block_data(self.id), 1)])
        client.publish(self.topics.presence(self.id), dumps(Presence("online")), qos=1, retain=True)
        self.report()
        self._connected.set()

    def report(self) -> None:
        with self._lock:  # numbered and published in one order, as the agent's Reporter does
            target = self._want.bundle if self._want is not None else None
            seq = self.sequence
            state = ReportedState(device_id=self.id, phase=self.phase, profile=self.profile, agent_version="sim-1",
                                  current=self.current, previous=self.previous, deployment_id=self.deployment_id,
                                  target=target, last_error=self.last_error, updated_at=self.clock(),
                                  progress=len(self._blocks) / self._want.block_count if self._want else 0.0,
                                  boot_id=seq.boot_id if seq else None, seq=seq.next() if seq else None)
            self.client.publish(self.topics.reported(self.id), dumps(state), qos=1, retain=True)

    def send_telemetry(self, p50: float, p99: float, inferences: int = 100, errors: int = 0) -> None:
        tel = Telemetry(model=self.current, inferences=inferences, errors=errors, latency={"p50": p50, "p99": p99})
        self.client.publish(self.topics.telemetry(self.id), dumps(tel), qos=1)

    def _set_phase(self, phase: str, error: str | None = None) -> None:
        with self.changed:
            self.phase, self.last_error = phase, error
            self.history.append((phase, self._want.bundle.sha256 if self._want else None))
            self.report()
            self.changed.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, kind = self.topics.parse(msg.topic)
            if device_id != self.id:
                raise ProtocolError(f"message for {device_id} delivered to {self.id}")
            with self._lock:
                if kind == "desired":
                    if msg.payload:
                        self._on_desired(DesiredState.parse(msg.payload))
                elif kind == "blocks/data":
                    self._on_block(msg.payload)
        except ProtocolError as exc:
            self.ignored += 1
            log.info("%s ignored %s: %s", self.id, msg.topic, exc)

    def _on_desired(self, want: DesiredState) -> None:
        if self.silent:
            return
        self.deployment_id = want.deployment_id
        if self.current is not None and want.bundle.sha256 == self.current.sha256:
            self._want = None
            self._set_phase("succeeded")
            return
        if want.profile != self.profile:
            self._set_phase("failed", f"bundle profile {want.profile} does not match {self.profile}")
            return
        if self.current and want.bundle.version < self.current.version and not want.allow_downgrade:
            self._set_phase("failed", "downgrade refused")
            return
        self._want, self._blocks, self._next = want, {}, 0
        if want.bundle.sha256 in self.files:
            self._finish()
            return
        self._set_phase("downloading")
        if want.source.get("type") == "http":
            threading.Thread(target=self._http_download, args=(want,), daemon=True).start()
        else:
            self._request_window()

    def _http_download(self, want: DesiredState) -> None:
        """The bundle from its (signed) HTTP URL, as the agent's http_download would fetch it."""
        try:
            with urllib.request.urlopen(want.source["url"], timeout=60) as resp:
                data = resp.read()
        except OSError as exc:
            with self._lock:
                self._set_phase("failed", f"download failed: {exc}")
            return
        with self._lock:
            if self._want is not want:
                return  # replaced meanwhile
            if hashlib.sha256(data).hexdigest() != want.bundle.sha256:
                self._set_phase("failed", "downloaded bundle does not match its SHA-256")
                return
            if self.keep_files:
                self.files[want.bundle.sha256] = data
            self._finish()

    def _request_window(self) -> None:
        assert self._want is not None
        total = self._want.block_count
        indices = [i for i in range(self._next, min(total, self._next + self.window)) if i not in self._blocks]
        self._next = min(total, self._next + self.window)
        req = BlockRequest(sha256=self._want.bundle.sha256, blocks=indices, block_size=self._want.block_size)
        self.client.publish(self.topics.block_request(self.id), dumps(req), qos=1)

    def _on_block(self, payload: bytes) -> None:
        block = decode_block(payload)
        want = self._want
        if want is None or block.sha256 != want.bundle.sha256 or block.total != want.block_count:
            raise ProtocolError("block for a bundle this device is not downloading")
        self._blocks[block.index] = block.data
        if len(self._blocks) == want.block_count:
            data = b"".join(self._blocks[i] for i in range(want.block_count))
            if hashlib.sha256(data).hexdigest() != want.bundle.sha256 or len(data) != want.size:
                self._set_phase("failed", "reassembled bundle does not match its SHA-256")
                return
            if self.keep_files:
                self.files[want.bundle.sha256] = data
            else:
                self._blocks = {}
            self._finish()
        elif self._next < want.block_count and all(
            i in self._blocks for i in range(max(0, self._next - self.window // 2))
        ):
            self._request_window()  # keep one window in flight while the previous one finishes

    def _finish(self) -> None:
        want = self._want
        assert want is not None
        if self.fail:
            self._set_phase("failed", self.fail)
            return
        self._set_phase("verifying")
        self.previous, self.current = self.current, want.bundle
        self._set_phase("succeeded")
        if self.undo_after_s is not None and not want.allow_downgrade:
            timer = threading.Timer(self.undo_after_s, self._undo)
            timer.daemon = True  # never keeps the test process alive
            timer.start()

    def _undo(self) -> None:
        if not self._connected.is_set():
            return
        with self.changed:
            self.current, self.previous = self.previous, self.current
            self._set_phase("rolled_back", "rolled back after the switch: 5 of 12 inferences on live inputs failed")


# --- helpers for the fleet tests ------------------------------------------------------------


def ref_of(path) -> BundleRef:
    """BundleRef (name, version, sha256) of a bundle file."""
    from edge_agent.bundle import read_manifest_unverified, sha256_file

    m = read_manifest_unverified(path)
    return BundleRef(name=m.name, version=m.version, sha256=sha256_file(path)[1])
