"""The block list of a resumable MQTT download, `<staging>/<sha>.blocks.json`: which blocks are stored.

Written atomically, and only after the staging file's data is fsynced, so the list never claims a block
that a power cut could have lost; read back when a download starts, so a restart fetches only the rest.
Kept apart from transfer.py (the download loop) so each stays short.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .statefile import read_json, write_json_atomic

log = logging.getLogger(__name__)


def load_bitmap(bitmap_path: Path, part_path: Path, sha256: str, size: int, block_size: int, count: int) -> list[bool]:
    """The stored blocks a previous run recorded (all False when there is no usable list or no staging file)."""
    saved = read_json(bitmap_path, None)
    if (
        isinstance(saved, dict)
        and saved.get("size") == size
        and saved.get("block_size") == block_size
        and isinstance(saved.get("done"), str)
        and part_path.is_file()
    ):
        bits = bytes.fromhex(saved["done"])
        done = [bool(bits[i // 8] >> (i % 8) & 1) if i // 8 < len(bits) else False for i in range(count)]
        log.info("resuming download of %s: %d/%d blocks already here", sha256[:12], sum(done), count)
        return done
    return [False] * count


def save_bitmap(bitmap_path: Path, sha256: str, size: int, block_size: int, done: list[bool]) -> None:
    """Write the list of stored blocks atomically (call after the staging file is fsynced)."""
    bits = bytearray((len(done) + 7) // 8)
    for i, d in enumerate(done):
        if d:
            bits[i // 8] |= 1 << (i % 8)
    write_json_atomic(bitmap_path, {"sha256": sha256, "size": size, "block_size": block_size, "done": bits.hex()})


__all__ = ["load_bitmap", "save_bitmap"]
