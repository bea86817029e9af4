"""The whole bundle file's SHA-256, computed while its blocks are stored instead of by reading the file again.

The verifying phase checks the downloaded file against the deployment's SHA-256. Reading the finished file
back and hashing it took a pass over every byte after the transfer (docs/fleet.md, "One device, one
bundle"); here each block is fed to the hash as it is written, in file order, from the very buffer that was
checked and written. A block that arrives ahead of the ones before it is not kept in memory: when the gap
is filled, the blocks stored beyond it are read back from the staging file (as is the part an earlier run
stored, on a resumed download). The result is the SHA-256 of the bytes handed to the file, in order; the
verifying phase compares it with the deployment's, as it compared the re-read file's.

It runs where the block is checked and written (BlockDownloader.on_frame, paho's network thread). Threads
of their own for the two hashes were measured and not kept: on this 2-core host they cost 0.7-0.8 ms/MB more
CPU each under real-time scheduling (GIL hand-offs per block) and gained no wall time (docs/fleet.md).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence


class InOrderDigest:
    """SHA-256 of blocks 0..count-1, fed as they are stored; `hexdigest()` once all have been fed."""

    def __init__(self, count: int, read_block: Callable[[int], bytes]) -> None:
        self.count = count
        self.next = 0  # blocks below it have been hashed
        self._hash = hashlib.sha256()
        self._read_block = read_block  # a stored block's bytes, from the staging file
        self.read_back = 0  # blocks hashed from the file (stored out of order, or by an earlier run)

    def stored(self, index: int, data: bytes | memoryview, done: Sequence[bool]) -> None:
        """Block `index` (its checked bytes `data`) is written and marked in `done`; hash what is now in order.

        Call from one thread at a time, after `done[index]` is set."""
        if index == self.next:
            self._hash.update(data)  # the frame's view: no copy
            self.next += 1
        while self.next < self.count and done[self.next]:
            self._hash.update(self._read_block(self.next))
            self.next += 1
            self.read_back += 1

    def hexdigest(self) -> str | None:
        """The file's SHA-256 once every block has been fed, else None."""
        return self._hash.hexdigest() if self.next == self.count else None


__all__ = ["InOrderDigest"]
