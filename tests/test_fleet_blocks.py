"""Block server: real Mosquitto, real fleet server, a raw paho client playing the device."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
import pytest

from edge_agent.bundle import TrustStore
from edge_agent.ota.protocol import Topics, dumps
from edge_agent.ota.block_frames import BlockRequest, decode_block
from edge_fleet.broker import start_broker
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry
from edge_fleet.server import FleetServer

WAIT = 10.0


class Device:
    """A raw paho client subscribed to one device's blocks/data topic."""

    def __init__(self, url_port: int, device_id: str) -> None:
        self.topics = Topics()
        self.id = device_id
        self.frames: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{device_id}")
        self.c.on_message = lambda _c, _u, m: self.frames.put(m)
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.connect("127.0.0.1", url_port)
        self.c.loop_start()
        self.c.subscribe(self.topics.block_data(device_id), qos=1)
        assert ready.wait(WAIT)

    def request(self, payload: bytes, topic: str | None = None) -> None:
        self.c.publish(topic or self.topics.block_request(self.id), payload, qos=1).wait_for_publish(WAIT)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def served(tmp_path, int8_bundle, digits):
    broker = start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False)
    reg = open_registry(tmp_path / "fleet.db")
    rec = publish_bundle(reg, int8_bundle, TrustStore.from_paths([digits.pub]))
    server = FleetServer(reg, broker.url).start()
    yield broker, server, rec
    server.stop()
    broker.stop()
    reg.close()


def test_blocks_reassemble_to_the_exact_file(served, int8_bundle):
    broker, server, rec = served
    assert broker.kind == "mosquitto"
    dev = Device(broker.port, "cam-1")
    try:
        block_size = 1024  # the protocol's smallest block: many blocks from a small bundle
        total = -(-rec.size // block_size)
        assert total > 16  # several requests' worth
        got: dict[int, bytes] = {}
        for start in range(0, total, 16):
            wanted = list(range(start, min(total, start + 16)))
            dev.request(dumps(BlockRequest(rec.sha256, wanted, block_size)))
            for _ in wanted:
                msg = dev.frames.get(timeout=WAIT)
                assert msg.topic == Topics().block_data("cam-1")
                block = decode_block(msg.payload)  # checks magic, size and the block's own SHA-256
                assert block.sha256 == rec.sha256 and block.total == total
                got[block.index] = block.data
        assert sorted(got) == list(range(total))
        assert b"".join(got[i] for i in range(total)) == int8_bundle.read_bytes()
        # a resumed download asks only for what it misses, duplicates are sent once
        dev.request(dumps(BlockRequest(rec.sha256, [total - 1, 3, 3], block_size)))
        indices = [decode_block(dev.frames.get(timeout=WAIT).payload).index for _ in range(2)]
        assert indices == [total - 1, 3]
    finally:
        dev.close()


def test_a_second_device_gets_the_same_blocks_from_the_frame_cache(served, int8_bundle):
    """Frames depend on bundle, block size and index only: the second device's request is answered
    from the cache (the file is not read or hashed again) with frames that still verify."""
    broker, server, rec = served
    first, second = Device(broker.port, "cam-a"), Device(broker.port, "cam-b")
    try:
        block_size = 4096
        wanted = list(range(min(8, -(-rec.size // block_size))))
        for dev in (first, second):
            dev.request(dumps(BlockRequest(rec.sha256, wanted, block_size)))
        frames = {dev.id: [dev.frames.get(timeout=WAIT).payload for _ in wanted] for dev in (first, second)}
        assert frames["cam-a"] == frames["cam-b"]
        data = int8_bundle.read_bytes()
        assert all(decode_block(f).data == data[b.index * block_size:(b.index + 1) * block_size]
                   for f in frames["cam-b"] for b in [decode_block(f)])
        assert server.blocks.stats["cached"] == len(wanted)
    finally:
        first.close()
        second.close()


def test_the_frame_cache_keeps_the_recent_frames_within_its_budget():
    from edge_fleet.block_server import _FrameCache

    cache = _FrameCache(budget=10)
    for i in range(4):
        cache.put(("s", 1, i), b"abc")  # 12 bytes: the oldest goes
    assert cache.get(("s", 1, 0)) is None and cache.size == 9
    cache.get(("s", 1, 1))  # used: now the newest
    cache.put(("s", 1, 9), b"xyz")
    assert cache.get(("s", 1, 1)) == b"abc" and cache.get(("s", 1, 2)) is None
    cache.put(("big", 1, 0), b"x" * 11)  # larger than the budget: never cached
    assert cache.get(("big", 1, 0)) is None and cache.size <= 10


def test_bad_requests_are_ignored_and_the_server_keeps_serving(served):
    broker, server, rec = served
    dev = Device(broker.port, "cam-2")
    try:
        before = server.blocks.stats["ignored"]
        dev.request(b"not json")
        dev.request(b'{"sha256": "abc", "blocks": [0], "block_size": 4096}')  # bad sha
        dev.request(dumps(BlockRequest("0" * 64, [0], 4096)))  # unknown bundle
        dev.request(dumps(BlockRequest(rec.sha256, [10**6], 4096)))  # block out of range
        dev.request(dumps(BlockRequest(rec.sha256, [0], 16 * 1024 * 1024)))  # over the block size limit
        dev.request(b'{"sha256": "' + rec.sha256.encode() + b'", "blocks": [], "block_size": 4096}')
        with pytest.raises(queue.Empty):
            dev.frames.get(timeout=1.0)
        # a request on another prefix's tree is refused by the topic check
        other = mqtt.MQTTMessage(topic=b"other/devices/cam-2/blocks/get")
        other.payload = dumps(BlockRequest(rec.sha256, [0], 4096))
        assert server.blocks.handle(other) is False
        wrong_kind = mqtt.MQTTMessage(topic=b"edgekit/devices/cam-2/blocks/data")
        wrong_kind.payload = other.payload
        assert server.blocks.handle(wrong_kind) is False
        # the server is still alive and serving
        dev.request(dumps(BlockRequest(rec.sha256, [0], 4096)))
        assert decode_block(dev.frames.get(timeout=WAIT).payload).index == 0
        assert server.blocks.stats["ignored"] - before >= 7
    finally:
        dev.close()
