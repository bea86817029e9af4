"""The whole bundle file's SHA-256, computed while its blocks are stored instead of by reading the file again.

The verifying phase checks the downloaded file against the deployment's SHA-256. Reading the finished file
back and hashing it took a pass over every byte after the transfer (docs/fleet.md, "One device, one
bundle"); here each block is fed to the hash as it is written, in file order, from the very buffer that was
checked and written. A block that arrives ahead of the ones before it is not kept in memory: when the gap
is filled, the blocks stored beyond it are read back from the staging file (as is the part an earlier run
stored, on a resumed download). The result is the SHA-256 of the bytes handed to the file, in order; the
verifying phase compares it with the deployment's, as it compared the re-read file's.

While a download runs (`start`..`finish`) the hashing has a thread of its own, so the block check on the
writer thread and this hash run on two cores: on a device without SHA instructions (a Raspberry Pi 4
hashes at about 100 MB/s a core) one thread doing both would halve the download's speed.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Callable, Sequence


class InOrderDigest:
    """SHA-256 of blocks 0..count-1, fed as they are stored; `hexdigest()` once all have been fed."""

    def __init__(self, count: int, read_block: Callable[[int], bytes], max_queued: int = 64) -> None:
        self.count = count
        self.next = 0  # blocks below it have been hashed
        self._hash = hashlib.sha256()
        self._read_block = read_block  # a stored block's bytes, from the staging file
        self.read_back = 0  # blocks hashed from the file (stored out of order, or by an earlier run)
        self.max_queued = max_queued  # blocks waiting for the thread at most (memory); beyond, the feeder hashes
        self._queue: queue.SimpleQueue[tuple[int, bytes | memoryview, Sequence[bool]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # stored() runs on one thread at a time

    def start(self) -> None:
        """Hash on a thread of its own from now on (until finish())."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="file-digest", daemon=True)
            self._thread.start()

    def finish(self) -> None:
        """Wait until every block fed so far is hashed; then feed() hashes on the caller's thread again."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def feed(self, index: int, data: bytes | memoryview, done: Sequence[bool]) -> None:
        """stored() on the digest thread (or here, with no thread or a full queue). Any thread."""
        if self._thread is not None and self._queue.qsize() < self.max_queued:
            self._queue.put((index, data, done))
            return
        with self._lock:
            self.stored(index, data, done)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            with self._lock:
                self.stored(*item)

    def stored(self, index: int, data: bytes | memoryview, done: Sequence[bool]) -> None:
        """Block `index` (its checked bytes `data`) is written and marked in `done`; hash what is now in order.

        Call from one thread at a time (feed() does), after `done[index]` is set."""
        if index == self.next:
            self._hash.update(data)  # hashlib releases the GIL for buffers over 2 KiB: paho keeps reading
            self.next += 1
        while self.next < self.count and done[self.next]:
            self._hash.update(self._read_block(self.next))
            self.next += 1
            self.read_back += 1

    def hexdigest(self) -> str | None:
        """The file's SHA-256 once every block has been fed, else None."""
        return self._hash.hexdigest() if self.next == self.count else None


__all__ = ["InOrderDigest"]
