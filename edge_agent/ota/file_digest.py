"""The whole bundle file's SHA-256, computed while the download runs instead of by reading the file afterwards.

The verifying phase checks the downloaded file against the deployment's SHA-256. Reading the finished file
back and hashing it took a pass over every byte after the transfer (docs/fleet.md, "One device, one
bundle"). Here the downloader's own thread (the one that refills the window and persists the block list,
idle most of the time) hashes the file from its start as far as the blocks are stored, in chunks of up to
1 MiB read back from the staging file while it is still in the page cache, trailing the blocks as they
arrive. paho's network thread, which checks each block, does no more than before; os.pread and hashlib
release the GIL, so the hash runs on the other core. Blocks stored out of order, or by an earlier run of a
resumed download, are simply read when the hash reaches them.

Hashing each block from the frame on the network thread (no read-back copy) was measured first and not
kept: the network thread is the transfer's slowest stage, and a second SHA-256 there slowed the transfer
by what the verifying pass had cost. Handing frames to threads of their own per block cost 0.7-0.8 ms/MB
in GIL hand-offs; here there is one hand-off per MiB.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

CHUNK_BYTES = 1 << 20  # read and hashed at once (several blocks when they are small)


class InOrderDigest:
    """SHA-256 of a file stored block by block in any order; `hexdigest()` once every block is hashed."""

    def __init__(self, count: int, block_size: int, size: int, read: Callable[[int, int], bytes]) -> None:
        self.count, self.block_size, self.size = count, block_size, size
        self.next = 0  # blocks below it have been hashed
        self._hash = hashlib.sha256()
        self._read = read  # read(offset, length): stored bytes of the file
        self.chunk_blocks = max(1, CHUNK_BYTES // block_size)

    def ready(self, done: Sequence[bool], blocks: int) -> bool:
        """Whether the next `blocks` blocks to hash (or all that are left) are stored."""
        return self.next < self.count and all(done[self.next : min(self.count, self.next + blocks)])

    def catch_up(self, done: Sequence[bool], max_bytes: int) -> int:
        """Hash the stored blocks from where the hash stands, in file order, up to a gap or about `max_bytes`;
        the bytes hashed. One thread at a time; `done[i]` must be set only once block i is written."""
        hashed = 0
        while hashed < max_bytes and self.next < self.count and done[self.next]:
            end = self.next + 1
            while end < self.count and end - self.next < self.chunk_blocks and done[end]:
                end += 1
            offset = self.next * self.block_size
            data = self._read(offset, min(self.size, end * self.block_size) - offset)
            self._hash.update(data)
            self.next = end
            hashed += len(data)
        return hashed

    def hexdigest(self) -> str | None:
        """The file's SHA-256 once every block has been hashed, else None."""
        return self._hash.hexdigest() if self.next == self.count else None


def bad_blocks(read: Callable[[int, int], bytes], count: int, block_size: int, size: int,
               listed: Sequence[bytes | None]) -> list[int]:
    """Indices of the stored blocks whose SHA-256 is not the listed one (or that have none listed): run only when
    the whole file's SHA-256 was wrong, so the happy path hashes each byte once."""
    bad = []
    for i in range(count):
        want = listed[i] if i < len(listed) else None
        if want is None or hashlib.sha256(read(i * block_size, min(block_size, size - i * block_size))).digest() != want:
            bad.append(i)
    return bad


__all__ = ["CHUNK_BYTES", "InOrderDigest", "bad_blocks"]
