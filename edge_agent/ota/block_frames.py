"""Block requests and binary block frames: how a bundle file travels over MQTT in pieces.

A device asks for the blocks it still needs (BlockRequest, JSON); the fleet answers each with a
binary frame carrying its index and SHA-256 (encode_block/decode_block), so a block can be checked
on its own (the agent does so only when the bundle failed its signed check: transfer.py, block_check.py).
Split from protocol.py, which holds the JSON control messages.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from .protocol import _SHA_RE, DEFAULT_BLOCK_SIZE, MAX_BLOCKS_PER_REQUEST, ProtocolError, _get, _load

@dataclass
class BlockRequest:
    """A device asks for some blocks of one bundle (by the bundle file's SHA-256)."""

    sha256: str
    blocks: list[int]
    block_size: int = DEFAULT_BLOCK_SIZE

    @classmethod
    def parse(cls, payload: bytes) -> "BlockRequest":
        w = "block request"
        o = _load(payload, w)
        sha = _get(o, "sha256", str, w)
        if not _SHA_RE.match(sha):
            raise ProtocolError("block request sha256 is not a lowercase hex SHA-256")
        blocks = _get(o, "blocks", list, w)
        if not blocks or len(blocks) > MAX_BLOCKS_PER_REQUEST:
            raise ProtocolError(f"block request must ask for 1-{MAX_BLOCKS_PER_REQUEST} blocks")
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise ProtocolError("block request indices must be non-negative integers")
        block_size = _get(o, "block_size", int, w)
        if not (1024 <= block_size <= 16 * 1024 * 1024):
            raise ProtocolError("block request block_size is out of range")
        return cls(sha256=sha, blocks=blocks, block_size=block_size)


# --- binary block frames ------------------------------------------------------------------

_FRAME_MAGIC = b"EKB1"


@dataclass
class Block:
    """One block of a bundle file: bytes [index*block_size, ...) with their own SHA-256."""

    sha256: str  # of the whole bundle file
    index: int
    total: int  # number of blocks in the file
    data: bytes | memoryview  # decode_block: a view into the frame, not a copy (hashed and written as it is)
    digest: bytes = b""  # SHA-256 of `data` as decode_block checked it, or the header's claim (check_digest=False)


def encode_block(block: Block, digest: bytes | None = None) -> bytes:
    """Frame: b'EKB1' | u32 header length | JSON header {sha256,index,total,size,block_sha256} | data.

    `digest`: the block's SHA-256 when the caller already has it (the fleet computed every block's
    hash for the deployment), so the block is not hashed again here."""
    header = json.dumps(
        {
            "sha256": block.sha256,
            "index": block.index,
            "total": block.total,
            "size": len(block.data),
            "block_sha256": (digest or hashlib.sha256(block.data).digest()).hex(),
        },
        separators=(",", ":"),
    ).encode()
    return _FRAME_MAGIC + struct.pack(">I", len(header)) + header + block.data


def decode_block(payload: bytes | memoryview, check_digest: bool = True) -> Block:
    """Parse and check a block frame (magic, header, size, block hash); ProtocolError if bad.

    The block's data is a read-only view into `payload` (keep `payload` unchanged while it is used).
    `check_digest=False` (the agent's download): the data is not hashed here, `digest` is the header's claim;
    installing's signed member check catches a bad block and a recheck then finds it (transfer.py)."""
    if len(payload) < 8 or payload[:4] != _FRAME_MAGIC:
        raise ProtocolError("block frame does not start with the EKB1 magic")
    (hlen,) = struct.unpack(">I", payload[4:8])
    if hlen > 4096 or 8 + hlen > len(payload):
        raise ProtocolError("block frame header length is invalid")
    try:
        header = json.loads(bytes(payload[8 : 8 + hlen]))  # bytes: the payload may be a memoryview
        if not isinstance(header, dict):
            raise TypeError("header is not an object")
        sha, index, total, size, bsha = (
            header["sha256"], header["index"], header["total"], header["size"], header["block_sha256"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"block frame header is malformed: {exc}") from exc
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, total, size)) or not 0 <= index < total:
        raise ProtocolError("block frame index/total are invalid")
    if not (isinstance(sha, str) and _SHA_RE.match(sha)):
        raise ProtocolError("block frame sha256 is invalid")
    data = memoryview(payload).toreadonly()[8 + hlen :]  # no copy (read-only: a checked block cannot change)
    if len(data) != size:
        raise ProtocolError(f"block {index} carries {len(data)} bytes, header says {size}")
    if not check_digest:
        if not (isinstance(bsha, str) and _SHA_RE.match(bsha)):
            raise ProtocolError(f"block {index} block_sha256 is not a lowercase hex SHA-256")
        return Block(sha256=sha, index=index, total=total, data=data, digest=bytes.fromhex(bsha))
    digest = hashlib.sha256(data).digest()
    if not isinstance(bsha, str) or digest.hex() != bsha:
        raise ProtocolError(f"block {index} is corrupt (SHA-256 mismatch)")
    return Block(sha256=sha, index=index, total=total, data=data, digest=digest)
