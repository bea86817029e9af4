"""Which stored blocks of a download are bad: run only after the bundle failed its signed check.

On the happy path a device hashes each byte of a bundle once, when installing unpacks it and checks
every member against the signed manifest (edge_agent/bundle/archive.py). Before branch xfer5 the
downloader also hashed the whole file behind the arriving blocks (an `InOrderDigest` here), and
verifying hashed every member once more without unpacking: three passes from receipt to installed
model, where one must run anyway (docs/fleet.md, "One device, one bundle"). When verifying or
installing finds the file damaged, the update goes back to downloading, which hashes each stored block
against the deployment's per-block list (bad_blocks) and fetches only the bad ones again.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence


def bad_blocks(read: Callable[[int, int], bytes], count: int, block_size: int, size: int,
               listed: Sequence[bytes | None]) -> list[int]:
    """Indices of the stored blocks whose SHA-256 is not the listed one (or that have none listed): run only when
    the bundle failed its signed check, so the happy path hashes each byte once."""
    bad = []
    for i in range(count):
        want = listed[i] if i < len(listed) else None
        if want is None or hashlib.sha256(read(i * block_size, min(block_size, size - i * block_size))).digest() != want:
            bad.append(i)
    return bad


__all__ = ["bad_blocks"]
