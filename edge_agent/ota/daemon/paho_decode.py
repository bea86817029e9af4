"""paho-mqtt's PUBLISH decoder with one copy of the payload instead of three (MQTT 3.1.1, the agent's protocol).

paho 2.2's `_packet.decode_publish` peels the topic length, the topic and the message id off the packet
with three `struct.unpack` calls, each of which copies the rest of the packet. For 128 KiB block frames
that was a quarter of the agent's receiving CPU (docs/fleet.md, "One device, one bundle"). This decoder
returns the same `PublishPacket` (tests/test_paho_decode.py compares the two on every shape of packet,
malformed ones included) and copies the payload once. It replaces paho's function only for the pinned
paho version (pyproject.toml); for any other version paho's own decoder stays, so an upgrade can cost
speed but never correctness. MQTT 5 packets (properties) go to paho's own decoder.

For the topics registered with `zero_copy(topic)` (the agent's block data) it copies nothing: the payload
is a read-only memoryview of the packet buffer, which paho 2.2's reader allocates afresh for every packet
and never touches again once the packet is handled. Every other topic gets bytes, as paho gives them.
"""

from __future__ import annotations

import logging

import paho.mqtt
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

log = logging.getLogger(__name__)

PAHO_VERSION = "2.2.0"  # the version whose decode_publish this one matches (pinned in pyproject.toml)
_paho_decode_publish = _packet.decode_publish
_zero_copy_topics: set[bytes] = set()  # topics whose payload is a view of the packet, not a copy


def zero_copy(topic: str, on: bool = True) -> None:
    """Hand this topic's payloads to on_message as read-only memoryviews of the packet (no copy), once
    `install()` has installed this decoder; its handler must accept a memoryview (len, slicing, hashing,
    os.pwrite do; json.loads does not). on=False: bytes again."""
    if on:
        _zero_copy_topics.add(topic.encode())
    else:
        _zero_copy_topics.discard(topic.encode())


def decode_publish(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> _packet.PublishPacket:
    """paho's decode_publish (same result, same MalformedPacket on bad input) with one payload copy."""
    if protocol == MQTTProtocolVersion.MQTTv5:
        return _paho_decode_publish(header, packet, protocol)
    qos = (header & 0x06) >> 1
    if len(packet) < 2:
        raise MalformedPacket("PUBLISH packet is shorter than its topic length")
    end = 2 + (packet[0] << 8 | packet[1])
    if end > len(packet):
        raise MalformedPacket("PUBLISH topic length runs past the packet")
    if end == 2:
        raise MalformedPacket("topic can't be empty in MQTTv3")
    topic = bytes(packet[2:end])
    mid = 0
    if qos > 0:
        if end + 2 > len(packet):
            raise MalformedPacket("PUBLISH packet has no message id")
        mid = packet[end] << 8 | packet[end + 1]
        end += 2
    if topic in _zero_copy_topics and isinstance(packet, bytearray):
        payload: bytes | memoryview = memoryview(packet)[end:].toreadonly()  # paho never reuses `packet`
    else:
        with memoryview(packet) as view:
            payload = bytes(view[end:])
    return _packet.PublishPacket(dup=bool(header & 0x08), qos=qos, retain=bool(header & 0x01), topic=topic,
                                 mid=mid, properties=None, payload=payload)


def install() -> bool:
    """Use this decoder in every paho client of this process (idempotent); False if paho is not the pinned one."""
    if _packet.decode_publish is decode_publish:
        return True
    if paho.mqtt.__version__ != PAHO_VERSION:
        log.debug("paho-mqtt %s is not %s: its own PUBLISH decoder stays", paho.mqtt.__version__, PAHO_VERSION)
        return False
    _packet.decode_publish = decode_publish
    return True


__all__ = ["PAHO_VERSION", "decode_publish", "install", "zero_copy"]
