"""Property-based fuzzing (Hypothesis) of every OTA protocol parser, the real ones the agent and the fleet run.

For any input a parser either returns a message whose every field has its declared type and range,
or raises ProtocolError: never another exception (which would be a crash path), never a value of
the wrong type (which is how `"allow_downgrade": "false"` became True).
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.ota.block_frames import Block, BlockRequest, decode_block, encode_block
from edge_agent.ota.protocol import (
    MAX_BLOCKS, BundleRef, DesiredState, Presence, ProtocolError, ReportedState, Telemetry, dumps,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSERS = (DesiredState.parse, ReportedState.parse, Presence.parse, Telemetry.parse, BlockRequest.parse)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
words = st.characters(blacklist_characters="\x00")  # a NUL is refused: no PostgreSQL text column holds one


def valid_desired() -> st.SearchStrategy[DesiredState]:
    return st.builds(
        DesiredState,
        deployment_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
        bundle=st.builds(BundleRef, name=st.text(words, min_size=1, max_size=10), version=st.integers(1, 2**31),
                         sha256=sha),
        size=st.integers(1, 2**30), profile=st.text(words, max_size=10),
        signature=st.fixed_dictionaries({"algorithm": st.text(words, max_size=8),
                                         "key_id": st.text(words, max_size=16),
                                         "signature": st.text(words, max_size=8)}),
        block_size=st.integers(2**14, 2**24), allow_downgrade=st.booleans(),
        issued_at=st.floats(0, 2e9, allow_nan=False),
    )


def check_desired(d: DesiredState) -> None:
    """Every field of a parsed desired state has its declared type and range."""
    assert isinstance(d.deployment_id, str) and d.deployment_id
    assert type(d.allow_downgrade) is bool
    assert type(d.size) is int and d.size > 0 and type(d.block_size) is int and 1024 <= d.block_size <= 2**24
    assert d.block_count <= MAX_BLOCKS
    assert isinstance(d.issued_at, float) and math.isfinite(d.issued_at)
    assert all(isinstance(d.signature[k], str) for k in ("algorithm", "key_id", "signature"))
    assert type(d.bundle.version) is int and d.bundle.version >= 1 and isinstance(d.bundle.name, str)
    assert d.source["type"] in ("mqtt", "http")
    if d.block_hashes is not None:
        assert len(d.block_digests() or []) == d.block_count


@FAST
@given(st.binary(max_size=600))
def test_any_bytes_are_a_message_or_a_protocol_error(payload):
    for parse in (*PARSERS, decode_block):
        try:
            parse(payload)
        except ProtocolError:
            pass


@FAST
@given(valid_desired())
def test_a_valid_desired_state_round_trips(d):
    if d.block_count > MAX_BLOCKS:
        return
    parsed = DesiredState.parse(dumps(d))
    check_desired(parsed)
    assert parsed == d


@FAST
@given(valid_desired(), st.sampled_from(["deployment_id", "bundle", "size", "profile", "signature", "source",
                                         "block_size", "allow_downgrade", "issued_at", "block_hashes"]), json_values)
def test_one_field_of_any_type_is_refused_or_parsed_with_its_type(d, field, value):
    """The probe's kind of message: a valid desired state with one field replaced by anything."""
    msg = json.loads(dumps(d))
    msg[field] = value
    try:
        parsed = DesiredState.parse(json.dumps(msg).encode())
    except ProtocolError:
        return
    check_desired(parsed)
    if field == "allow_downgrade":
        assert parsed.allow_downgrade is (value is True)


@FAST
@given(st.sampled_from(PARSERS), st.dictionaries(st.sampled_from(
    ["deployment_id", "bundle", "size", "profile", "signature", "source", "block_size", "allow_downgrade", "issued_at",
     "device_id", "phase", "agent_version", "current", "progress", "updated_at", "state", "at", "inferences",
     "errors", "latency", "sha256", "blocks", "block_hashes"]), json_values, max_size=12))
def test_objects_with_protocol_keys_and_any_values(parse, obj):
    try:
        msg = parse(json.dumps(obj).encode())
    except ProtocolError:
        return
    if isinstance(msg, DesiredState):
        check_desired(msg)
    elif isinstance(msg, ReportedState):
        assert 0.0 <= msg.progress <= 1.0 and isinstance(msg.updated_at, float)
    elif isinstance(msg, Telemetry):
        assert type(msg.inferences) is int and all(isinstance(v, float) for v in msg.latency.values())
    elif isinstance(msg, BlockRequest):
        assert all(type(b) is int and b >= 0 for b in msg.blocks)


@FAST
@given(sha, st.integers(0, 100), st.binary(max_size=300), st.integers(0, 400), st.binary(max_size=8))
def test_a_damaged_block_frame_is_refused_whole(bundle_sha, index, data, cut, junk):
    frame = encode_block(Block(bundle_sha, index, index + 1, data))
    assert decode_block(frame).data == data
    damaged = frame[:cut] + junk + frame[cut + len(junk):] if cut < len(frame) else frame + junk
    try:
        block = decode_block(damaged)
    except ProtocolError:
        return
    assert block.data == data and block.index == index  # only a no-op change may pass
