"""Malformed MQTT messages and corrupted agent files, by kind: shared by the live fuzz test and
scripts/bench_reliability.py (which repeats the probe's counts). Seeded, so a failure replays."""

from __future__ import annotations

import json
import random
import struct
from typing import Any, Callable, Iterator

from edge_agent.ota.protocol import Block, encode_block

# the kinds of value the probe put into each desired field
ODD_VALUES: list[Any] = ["false", "true", 0, 1, -1, 2**63, 2**80, 1e308, -0.0, None, "", "x" * 300, [], {}, [1, 2],
                         {"a": 1}, True, False, "../../etc", "\u0000", 0.5]


def _mutated_desired(rng: random.Random, valid: dict[str, Any]) -> bytes:
    msg = json.loads(json.dumps(valid))
    field = rng.choice(sorted(msg))
    if rng.random() < 0.2 and isinstance(msg[field], dict) and msg[field]:
        inner = rng.choice(sorted(msg[field]))
        msg[field][inner] = rng.choice(ODD_VALUES)
    elif rng.random() < 0.1:
        del msg[field]
    else:
        msg[field] = rng.choice(ODD_VALUES)
    return json.dumps(msg).encode()


def _announcing_too_much(rng: random.Random, valid: dict[str, Any]) -> bytes:
    msg = dict(valid, size=rng.choice([2**40, 2**50, 2**33, 300 << 20]), block_size=rng.choice([1024, 2048, 1 << 24]))
    return json.dumps(msg).encode()


def _bad_json(rng: random.Random, valid: dict[str, Any]) -> bytes:
    text = json.dumps(valid)
    return rng.choice([text[: rng.randrange(len(text))].encode(), b"[]", b"null", b"\xff\xfe", b"{" * 2000,
                       b'{"a":' * 500 + b"1" + b"}" * 500, text.encode().replace(b'"', b"'", 3)])


def _random_bytes(rng: random.Random, valid: dict[str, Any]) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 100, 4096]))


def _oversized(rng: random.Random, valid: dict[str, Any]) -> bytes:
    return json.dumps(dict(valid, pad="x" * (300 * 1024))).encode()


def _bad_block_frame(rng: random.Random, valid: dict[str, Any]) -> bytes:
    sha = valid["bundle"]["sha256"]
    frame = encode_block(Block(sha, rng.randrange(4), 4, rng.randbytes(64)))
    choice = rng.randrange(5)
    if choice == 0:  # header length pointing past the end
        return frame[:4] + struct.pack(">I", 2**31) + frame[8:]
    if choice == 1:  # a forged block: right bundle hash, its own (matching) block hash, wrong data
        return encode_block(Block(sha, rng.randrange(4), rng.randrange(1, 2**31), rng.randbytes(2048)))
    if choice == 2:
        return frame[: rng.randrange(len(frame))]
    if choice == 3:  # header of the wrong JSON type
        header = b"[1,2,3]"
        return b"EKB1" + struct.pack(">I", len(header)) + header
    return bytes(b ^ 0x5A for b in frame)


# kind -> (topic kind the payload goes to, generator)
PUBLISH_KINDS: dict[str, tuple[str, Callable[[random.Random, dict[str, Any]], bytes]]] = {
    "desired: one field of a wrong type": ("desired", _mutated_desired),
    "desired: announces a huge download": ("desired", _announcing_too_much),
    "desired: not JSON / wrong JSON": ("desired", _bad_json),
    "desired: random bytes": ("desired", _random_bytes),
    "desired: over the size limit": ("desired", _oversized),
    "blocks/data: malformed or forged frame": ("blocks/data", _bad_block_frame),
}


def publishes(seed: int, valid_desired: dict[str, Any], count: int) -> Iterator[tuple[str, str, bytes]]:
    """`count` (kind, topic kind, payload), cycling through the kinds."""
    rng = random.Random(seed)
    kinds = list(PUBLISH_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        topic_kind, make = PUBLISH_KINDS[kind]
        yield kind, topic_kind, make(rng, valid_desired)


# what a damaged agent file can look like (each is written over one persisted file)
CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"\x00\xffnot json",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "wrong JSON type": lambda raw: b"[1, 2, 3]",
}
