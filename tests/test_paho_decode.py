"""The agent's PUBLISH decoder (edge_agent/ota/daemon/paho_decode.py) answers exactly as paho's own:
same packet for every well-formed PUBLISH, MalformedPacket for every malformed one; and it is in use in
the agent's clients for the pinned paho, so a paho upgrade that changes its internals shows up here."""

from __future__ import annotations

import struct

import paho.mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from edge_agent.bundle import TrustStore
from edge_agent.ota.daemon import paho_decode
from edge_agent.ota.daemon.config import AgentConfig
from edge_agent.ota.daemon.mqtt_link import make_client

V311 = MQTTProtocolVersion.MQTTv311
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def both(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion = V311):
    """(paho's result or its MalformedPacket, ours or ours)."""
    out = []
    for decode in (paho_decode._paho_decode_publish, paho_decode.decode_publish):  # noqa: SLF001
        try:
            out.append(decode(header, bytearray(packet), protocol))
        except MalformedPacket:
            out.append(MalformedPacket)
    return out


def publish(topic: bytes, qos: int, mid: int, payload: bytes) -> bytes:
    return struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + payload


@FAST
@given(st.integers(0, 15), st.binary(max_size=40), st.integers(0, 65535), st.binary(max_size=300))
def test_well_formed_publish_packets_decode_as_paho_decodes_them(flags, topic, mid, payload):
    qos = (flags >> 1) & 3
    theirs, ours = both(0x30 | flags, publish(topic, qos, mid, payload))
    assert theirs == ours
    if ours is not MalformedPacket:
        assert type(ours.payload) is bytes and type(ours.topic) is bytes


@FAST
@given(st.integers(0, 15), st.binary(max_size=60))
def test_any_bytes_decode_or_fail_as_paho_does(flags, packet):
    theirs, ours = both(0x30 | flags, packet)
    assert theirs == ours


def test_mqtt5_packets_are_left_to_paho():
    packet = publish(b"a/b", 1, 7, b"") + b"\x00" + b"hello"  # empty properties, then the payload
    theirs, ours = both(0x32, packet, MQTTProtocolVersion.MQTTv5)
    assert theirs._replace(properties=None) == ours._replace(properties=None) and ours.payload == b"hello"
    assert ours.properties is not None  # paho's Properties objects do not compare equal, so compared apart


def test_the_agents_clients_use_it_with_the_pinned_paho(monkeypatch):
    assert paho.mqtt.__version__ == paho_decode.PAHO_VERSION, "paho-mqtt changed: check paho_decode against it"
    monkeypatch.setattr(_packet, "decode_publish", paho_decode._paho_decode_publish)  # noqa: SLF001 - as at start
    config = AgentConfig(broker="mqtt://127.0.0.1:1883", device_id="dev-decode", profile_name="raspberry-pi-4",
                         latency_budget_ms=None, trust=TrustStore({}))
    make_client(config, config.broker_addresses()[0])
    assert _packet.decode_publish is paho_decode.decode_publish


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv31, V311])
def test_an_empty_topic_is_refused(protocol):
    assert both(0x30, publish(b"", 0, 0, b"x"), protocol) == [MalformedPacket, MalformedPacket]


def test_a_zero_copy_topic_gets_a_read_only_view_of_the_packet_and_others_get_bytes():
    packet = bytearray(publish(b"dev/blocks/data", 1, 9, b"frame bytes"))
    paho_decode.zero_copy("dev/blocks/data")
    try:
        view = paho_decode.decode_publish(0x32, packet, V311).payload
        other = paho_decode.decode_publish(0x32, bytearray(publish(b"dev/desired", 1, 9, b"{}")), V311).payload
    finally:
        paho_decode.zero_copy("dev/blocks/data", on=False)
    assert isinstance(view, memoryview) and view.obj is packet and view.readonly and bytes(view) == b"frame bytes"
    assert type(other) is bytes
    assert type(paho_decode.decode_publish(0x32, packet, V311).payload) is bytes  # unregistered: a copy again


def test_paho_reads_every_packet_into_a_buffer_of_its_own(tmp_path):
    """What zero-copy payloads rely on: views of earlier packets kept while later ones arrive stay intact.
    Fails if a paho upgrade reuses its read buffer (earlier views would change, or paho would fail to grow it)."""
    import os
    import threading

    import paho.mqtt.client as mqtt

    from edge_fleet.broker import start_broker

    frames = [os.urandom(200_000 + i) for i in range(12)]
    got: list = []
    done = threading.Event()
    with start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False) as broker:
        paho_decode.install()
        paho_decode.zero_copy("zc/blocks/data")
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="zc-sub")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="zc-pub")
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda c, u, msg: (got.append(msg.payload), len(got) == len(frames) and done.set())
        try:
            sub.connect(broker.host, broker.port)
            sub.loop_start()
            sub.subscribe("zc/blocks/data", qos=1)
            assert subscribed.wait(10)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            for frame in frames:
                pub.publish("zc/blocks/data", frame, qos=1)
            assert done.wait(30)
        finally:
            paho_decode.zero_copy("zc/blocks/data", on=False)
            for c in (sub, pub):
                c.disconnect()
                c.loop_stop()
    assert all(isinstance(p, memoryview) for p in got)
    assert [bytes(p) for p in got] == frames


def test_the_agent_takes_only_its_block_data_without_a_copy_and_gives_it_back_when_it_stops():
    from edge_agent.ota.daemon.mqtt_link import DeviceTopics, MqttLink
    from edge_agent.ota.protocol import Topics

    config = AgentConfig(broker="mqtt://127.0.0.1:1", device_id="dev-zc", profile_name="raspberry-pi-4",
                         latency_budget_ms=None, trust=TrustStore({}))
    topics = DeviceTopics.for_device(Topics(), config.device_id)
    link = MqttLink(config, topics)
    link.route(topics.desired, lambda payload: None)
    link.route(topics.block_data, lambda payload: None, zero_copy=True)
    assert paho_decode._zero_copy_topics >= {topics.block_data.encode()}  # noqa: SLF001
    assert topics.desired.encode() not in paho_decode._zero_copy_topics  # noqa: SLF001 - JSON handlers get bytes
    link.stop()
    assert topics.block_data.encode() not in paho_decode._zero_copy_topics  # noqa: SLF001
