"""Tests for edge_fleet.broker against real brokers on 127.0.0.1 (no mocks of MQTT).

Mosquitto tests FAIL (not skip) when the binary is missing: run
scripts/ensure_mosquitto.sh first. The amqtt tests need `pip install amqtt==0.12.1`.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_fleet.broker import (Broker, BrokerStartError, BrokerUnavailable, amqtt, amqtt_available, find_mosquitto,
                               mosquitto, start_broker)
from edge_fleet.errors import FleetError

HOST = "127.0.0.1"
WAIT = 5.0  # upper bound for any single network wait; never asserted as a duration
REPO = Path(__file__).resolve().parents[1]
ACL_EXAMPLE = REPO / "examples" / "mosquitto" / "acl.conf"


class Client:
    """Minimal blocking wrapper around a paho-mqtt 2.x client for tests."""

    def __init__(self, b: Broker, client_id: str, username: str | None = None,
                 password: str | None = None, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311) -> None:
        self.b = b
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack = threading.Event()
        self.subacks: dict[int, threading.Event] = {}
        self.reason_code: mqtt.ReasonCode | None = None
        self.connack_props: mqtt.Properties | None = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.on_subscribe = lambda _c, _u, mid, _rc, _p: self.subacks.setdefault(mid, threading.Event()).set()

    def _on_connect(self, _c: mqtt.Client, _u: object, _flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        self.reason_code, self.connack_props = rc, props  # type: ignore[assignment]
        self.connack.set()

    def connect(self) -> mqtt.ReasonCode:
        self.c.connect(self.b.host, self.b.port, keepalive=30)
        self.c.loop_start()
        assert self.connack.wait(WAIT), f"no CONNACK from {self.b.kind} at {self.b.url}"
        assert self.reason_code is not None
        return self.reason_code

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        assert self.subacks.setdefault(mid, threading.Event()).wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def get(self, topic: str) -> mqtt.MQTTMessage:
        """Next message on exactly `topic` (others are ignored: amqtt may send extra retained ones)."""
        while True:
            msg = self.messages.get(timeout=WAIT)
            if msg.topic == topic:
                return msg

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def mosquitto_required() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure_mosquitto.sh "
                    "(or apt-get install mosquitto) before the tests")


@pytest.fixture
def amqtt_required() -> None:
    if not amqtt_available():
        pytest.fail("amqtt is not installed: pip install -r requirements-broker.txt")


@pytest.fixture
def mosq(tmp_path: Path, mosquitto_required: None) -> Iterator[Broker]:
    with start_broker(tmp_path / "broker", host=HOST, fallback=False) as b:
        assert b.kind == "mosquitto"
        yield b


@pytest.fixture
def amq(tmp_path: Path, amqtt_required: None) -> Iterator[Broker]:
    with start_broker(tmp_path / "broker", host=HOST, prefer="amqtt", fallback=False) as b:
        assert b.kind == "amqtt"
        yield b


def _roundtrip(b: Broker) -> None:
    assert b.url == f"mqtt://{HOST}:{b.port}"
    sub, pub = Client(b, "sub"), Client(b, "pub")
    try:
        assert not sub.connect().is_failure and not pub.connect().is_failure
        sub.subscribe("edgekit/devices/d1/#")
        payload = os.urandom(64 * 1024)
        pub.publish("edgekit/devices/d1/reported", payload)
        msg = sub.get("edgekit/devices/d1/reported")
        assert msg.payload == payload and msg.qos == 1
    finally:
        sub.close()
        pub.close()


def _retained_survives_restart(b: Broker) -> None:
    port = b.port
    pub = Client(b, "fleet")
    pub.connect()
    pub.subscribe("edgekit/devices/d1/desired")
    pub.publish("edgekit/devices/d1/desired", b'{"model": "v2"}', retain=True)
    # Wait until the broker has routed it: amqtt PUBACKs before processing and drops
    # the message if the client disconnects in between.
    pub.get("edgekit/devices/d1/desired")
    pub.close()
    b.restart()
    assert b.port == port and b.running
    sub = Client(b, "late-subscriber")
    try:
        sub.connect()
        sub.subscribe("edgekit/devices/d1/desired")
        msg = sub.get("edgekit/devices/d1/desired")
        assert msg.payload == b'{"model": "v2"}' and msg.retain
    finally:
        sub.close()


def test_mosquitto_roundtrip(mosq: Broker) -> None:
    assert mosq.pid is not None
    _roundtrip(mosq)


def test_mosquitto_retained_survives_restart(mosq: Broker) -> None:
    old_pid = mosq.pid
    _retained_survives_restart(mosq)
    assert mosq.pid != old_pid
    assert (mosq.data_dir / "persistence" / "mosquitto.db").is_file()


def test_mosquitto_stop_leaves_no_process(mosq: Broker) -> None:
    pid = mosq.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    mosq.stop()
    mosq.stop()  # idempotent
    assert mosq.pid is None and not mosq.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(OSError):
        socket.create_connection((HOST, mosq.port), timeout=1).close()


def test_mosquitto_max_message_size_is_advertised(tmp_path: Path, mosquitto_required: None) -> None:
    with start_broker(tmp_path, host=HOST, max_message_mb=1, fallback=False) as b:
        c = Client(b, "v5", protocol=mqtt.MQTTv5)
        try:
            c.connect()
            limit = getattr(c.connack_props, "MaximumPacketSize", None)
            assert limit is not None and 2**20 < limit < 2 * 2**20
        finally:
            c.close()


def test_start_error_reports_log_tail(tmp_path: Path, mosquitto_required: None) -> None:
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerStartError, match=r"did not start.*Address already in use") as caught:
            start_broker(tmp_path, host=HOST, port=port, fallback=False, start_timeout=WAIT)
    # one line for the user; the log tails stay available as detail (printed by `edge-fleet -v`)
    assert "\n" not in caught.value.message and "mosquitto.log (tail)" in (caught.value.detail or "")
    assert isinstance(caught.value, FleetError) and caught.value.exit_code == 61


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_wrong_password_rejected(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{kind}_required")
    with start_broker(tmp_path, host=HOST, prefer=kind, fallback=False,  # type: ignore[arg-type]
                      username="fleet", password="s3cret") as b:
        assert b.kind == kind
        good = Client(b, "good", "fleet", "s3cret")
        bad = Client(b, "bad", "fleet", "wrong")
        anon = Client(b, "anon")
        try:
            assert not good.connect().is_failure
            assert bad.connect().is_failure
            assert anon.connect().is_failure
        finally:
            for c in (good, bad, anon):
                c.close()


def test_amqtt_roundtrip(amq: Broker) -> None:
    assert amq.pid is None
    _roundtrip(amq)


def test_amqtt_retained_survives_restart(amq: Broker) -> None:
    _retained_survives_restart(amq)


def test_acl_devices_confined_to_own_subtree(tmp_path: Path, mosquitto_required: None) -> None:
    users = {"fleet": "fleet-pw", "d1": "d1-pw", "d2": "d2-pw"}
    with start_broker(tmp_path, host=HOST, users=users, acl_file=ACL_EXAMPLE, fallback=False) as b:
        fleet, d1 = Client(b, "fleet", "fleet", "fleet-pw"), Client(b, "d1", "d1", "d1-pw")
        try:
            assert not fleet.connect().is_failure and not d1.connect().is_failure
            fleet.subscribe("edgekit/#")
            d1.publish("edgekit/devices/d2/reported", b"forged")  # denied: dropped by broker
            d1.publish("edgekit/devices/d1/reported", b"ok")
            # Messages from one client arrive in order, so had the forged one been
            # accepted it would be delivered before this one.
            first = fleet.messages.get(timeout=WAIT)
            assert (first.topic, first.payload) == ("edgekit/devices/d1/reported", b"ok")
            with pytest.raises(queue.Empty):
                fleet.messages.get(timeout=0.3)
            # and the fleet user may write into a device's subtree, which the device can read
            d1.subscribe("edgekit/devices/d1/desired")
            fleet.publish("edgekit/devices/d1/desired", b"v2")
            assert d1.get("edgekit/devices/d1/desired").payload == b"v2"
        finally:
            fleet.close()
            d1.close()


def test_acl_without_mosquitto_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only supported by the mosquitto"):
        start_broker(tmp_path, prefer="amqtt", fallback=False, acl_file=ACL_EXAMPLE)


def test_unavailable_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulates a machine with neither broker installed (only the lookups are replaced).
    monkeypatch.setattr(mosquitto, "find_mosquitto", lambda: None)
    monkeypatch.setattr(amqtt, "amqtt_available", lambda: False)
    with pytest.raises(BrokerUnavailable, match=r"no MQTT broker available: install mosquitto "
                       r"\(apt-get install mosquitto\) or pip install amqtt"):
        start_broker(tmp_path)


def test_mosquitto_keeps_a_burst_of_reports_for_a_subscriber_that_lags(mosq: Broker) -> None:
    """The fleet server is one subscriber for every device's reports. While it does not acknowledge
    (busy), Mosquitto queues QoS 1 messages for it; past max_queued_messages (1000 by default) it drops
    them silently. Our config raises the limit: a burst of 3,000 reports all arrive."""
    sub, pub = Client(mosq, "fleet-sub"), Client(mosq, "devices")
    burst = 3000
    try:
        sub.connect()
        pub.connect()
        sub.subscribe("edgekit/devices/+/reported")
        sub.c.loop_stop()  # the subscriber lags: no PUBACK, so the broker must queue
        infos = [pub.c.publish(f"edgekit/devices/d{i}/reported", b"{}", qos=1) for i in range(burst)]
        for info in infos:
            info.wait_for_publish(WAIT)
        sub.c.loop_start()
        got = 0
        try:
            while got < burst:
                sub.messages.get(timeout=WAIT)
                got += 1
        except queue.Empty:
            pass
        assert got == burst, f"{burst - got} of {burst} reports dropped by the broker"
    finally:
        sub.close()
        pub.close()


def test_logins_reloaded_from_two_threads_at_once_all_work(tmp_path):
    """The fleet server reloads the broker's logins from its rollout loop (the logins file changed) while
    `add_device` does from another thread. Before the fix both built the same `passwd.new`: one removed
    it under the other's mosquitto_passwd (CalledProcessError, seen in test_fleet_rollout under load)."""
    users = {f"dev-{i}": f"pw-{i}" for i in range(8)}
    broker = start_broker(tmp_path / "b", prefer="mosquitto", fallback=False, users={"fleet": "f"})
    errors: list[BaseException] = []

    def reload(n: int) -> None:
        try:
            for _ in range(4):
                broker.reload_users({"fleet": "f", **users, f"extra-{n}": "x"})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=reload, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        names = {line.split(":")[0] for line in (broker.data_dir / "passwd").read_text().splitlines()}
        assert names >= {"fleet", *users} and len(names & {f"extra-{n}" for n in range(4)}) == 1
    finally:
        broker.stop()
