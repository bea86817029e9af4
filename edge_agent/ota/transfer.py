"""Bundle download: MQTT block streams (resumable, sparse staging file + bitmap) and the staging folder.

MQTT: the agent asks for the blocks it still needs (BlockRequest on blocks/get, at most
MAX_WINDOW in flight), each frame on blocks/data is checked (decode_block: magic, header,
bundle, index and size; not hashed) and written at its offset in `<staging>/<sha>.part`; the set of
completed blocks is kept in `<sha>.blocks.json` (bitmap, written atomically after the data
is fsynced, every PERSIST_BYTES or PERSIST_EVERY_S). After a disconnect, broker restart or agent
restart only missing blocks are requested again. HTTP(S) is in http_fetch.py.

No SHA-256 here on the happy path: the device hashes each byte once, when installing unpacks the bundle
and checks every member against the signed manifest (states.py; that check must run anyway and is
stronger than the file's hash, since it is signed). Only when verifying or installing finds the file
damaged does the update come back here with `recheck`: each stored block is hashed and compared with the
deployment's per-block list (or, without one, the hash its frame claimed, handed over in `claimed`); the
bad ones are fetched again, at most MAX_REPAIRS rounds per update (counted in the job). Hashing the whole
file here as well was a second pass (0.64 ms/MB with SHA-NI, ~10 ms/MB on a Pi 4), and on two cores it
cost about 20 % of the transfer's throughput (docs/fleet.md, "One device, one bundle").

Where a download's time goes (docs/fleet.md, "One device, one bundle"): on the network thread each
block is checked cheaply and written; nothing there may cost per byte or per block. (A writer thread for
this was measured twice and not kept: the GIL hand-offs per block cost up to 0.7 ms/MB on two cores and
gained no wall time.) The download thread is woken only when it has work (refill the window, persist,
finish), not per block: it persists while blocks keep arriving so that the file's writeback overlaps
the transfer. The block list on disk is block_bitmap.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .protocol import MAX_BLOCKS, MAX_BLOCKS_PER_REQUEST, ProtocolError
from .block_frames import BlockRequest, decode_block
from .block_bitmap import load_bitmap, save_bitmap
from .block_check import bad_blocks
from .staging import clean_staging, discard_staging
from .testhooks import pause_blocks, pause_point
from ..errors import AgentError

log = logging.getLogger(__name__)

_FRAME_OVERHEAD = 8 + 4096
# Blocks asked for and not yet received, at most: several requests of MAX_BLOCKS_PER_REQUEST each, so the
# pipe stays full across the round trip (device -> broker -> fleet -> broker -> device) that a refill takes.
# They wait in the broker's queue for this device, not in the agent's memory.
MAX_WINDOW = 4 * MAX_BLOCKS_PER_REQUEST
# The block list is persisted (staging file fsynced, then the list written) once this many bytes of blocks or
# this many seconds have passed since the last time: what a power cut can cost is bounded, and the fsync at the
# end of the download waits for the tail only, since the rest was written back while blocks kept arriving.
PERSIST_BYTES = 8 << 20
PERSIST_EVERY_S = 0.5
MAX_REPAIRS = 3  # rounds of re-checking blocks after the bundle failed its signed check, then the update fails


class TransferError(AgentError, RuntimeError):
    """The bundle could not be downloaded (one line with the reason)."""

    code_name = "download"
    kind = "transfer"


class TransferCancelled(TransferError):
    """The download was abandoned because a newer desired state arrived or the agent stops."""


@dataclass
class TransferStats:
    """Counters of one download, for tests, logs and the benchmark."""

    received: int = 0  # blocks stored in this run (a bad one fetched again counts again)
    duplicates: int = 0  # frames for blocks already stored
    rejected: int = 0  # malformed, foreign or out-of-range frames
    forged: int = 0  # stored blocks found not to be the block listed (deployment's list, else the frame's claim)
    rechecked: int = 0  # stored blocks hashed by a recheck (0 on the happy path: no hash in the download)
    requests: int = 0  # BlockRequest messages sent
    requested_blocks: list[int] = field(default_factory=list)  # every index asked for, in order
    resumed_with: int = 0  # blocks already complete when this run started
    timeouts: int = 0
    wakeups: int = 0  # passes of the download loop: it is woken to refill, persist or finish, not per block


class BlockDownloader:
    """Fetch one bundle file over MQTT blocks into a resumable staging file."""

    def __init__(
        self,
        staging_dir: Path,
        sha256: str,
        size: int,
        block_size: int,
        send_request: Callable[[BlockRequest], None],
        is_connected: Callable[[], bool] = lambda: True,
        cancel: threading.Event | None = None,
        window: int = MAX_WINDOW,
        retry_timeout_s: float = 3.0,
        stall_timeout_s: float = 120.0,
        progress: Callable[[float], None] | None = None,
        ota_dir: Path | None = None,
        block_digests: list[bytes] | None = None,
        persist_bytes: int = PERSIST_BYTES,
        persist_every_s: float = PERSIST_EVERY_S,
        recheck: bool = False,
        claimed: list[bytes | None] | None = None,
    ) -> None:
        self.sha256, self.size, self.block_size = sha256, size, block_size
        self.count = max(1, -(-size // block_size))
        if self.count > MAX_BLOCKS:
            raise TransferError(f"{self.count} blocks is over the {MAX_BLOCKS}-block limit")
        if block_digests is not None and len(block_digests) != self.count:
            raise TransferError(f"{len(block_digests)} block hashes for {self.count} blocks")
        self._digests = block_digests  # from the deployment: checked only by a recheck
        # without a deployment list: the hash each frame claimed, from this run or (claimed) the run before
        self.claimed: list[bytes | None] | None = None
        if block_digests is None:
            self.claimed = list(claimed) if claimed is not None and len(claimed) == self.count else [None] * self.count
        self._recheck = recheck  # verifying or installing found the file damaged: hash the stored blocks first
        self.part_path = Path(staging_dir) / f"{sha256}.part"
        self.bitmap_path = Path(staging_dir) / f"{sha256}.blocks.json"
        self._send = send_request
        self._is_connected = is_connected
        self._cancel = cancel or threading.Event()
        self.window = max(1, min(window, MAX_WINDOW))
        self.retry_timeout_s = retry_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._progress = progress
        self._ota_dir = ota_dir or Path(staging_dir)
        self._cond = threading.Condition()
        self._inflight: dict[int, float] = {}
        self._paused = False
        self._pause_after: int | None = None
        self.stats = TransferStats()
        Path(staging_dir).mkdir(parents=True, exist_ok=True)
        self._done = load_bitmap(self.bitmap_path, self.part_path, sha256, size, block_size, self.count)
        self.stats.resumed_with = sum(self._done)
        self._remaining = self.count - self.stats.resumed_with  # blocks not stored yet
        self._cursor = 0  # every block below it is stored or in flight (see _next_request)
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)  # sparse: blocks land at their offsets in any order
        self._unsaved = 0  # blocks stored since the block list was last persisted
        self._persist_blocks = max(1, persist_bytes // block_size)
        self._persist_every_s = persist_every_s
        self._last_progress = time.monotonic()

    def _read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    # --- bitmap --------------------------------------------------------------------------

    def _save_bitmap(self) -> None:
        """Persist the completed-block set; call WITHOUT holding the lock (fsync can be slow)."""
        with self._cond:
            done = list(self._done)
            self._unsaved = 0
        os.fsync(self._fd)  # data first, then the record that says it is there
        save_bitmap(self.bitmap_path, self.sha256, self.size, self.block_size, done)

    @property
    def completed(self) -> set[int]:
        with self._cond:
            return {i for i, d in enumerate(self._done) if d}

    @property
    def complete(self) -> bool:
        return self._remaining == 0

    # --- incoming frames (network thread) ------------------------------------------------

    def on_frame(self, payload: bytes | memoryview) -> bool:
        """Store one block frame if it is valid, wanted and new; log and ignore it otherwise (one thread)."""
        if len(payload) > self.block_size + _FRAME_OVERHEAD:
            self.stats.rejected += 1
            log.warning("ignoring oversized block frame (%d bytes)", len(payload))
            return False
        try:
            block = decode_block(payload, check_digest=False)  # not hashed: installing checks the members
        except ProtocolError as exc:
            self.stats.rejected += 1
            log.warning("ignoring block frame: %s", exc)
            return False
        expected = min(self.block_size, self.size - block.index * self.block_size)
        if block.sha256 != self.sha256 or block.total != self.count or len(block.data) != expected:
            self.stats.rejected += 1
            log.warning("ignoring block %d: not part of the bundle being downloaded", block.index)
            return False
        with self._cond:
            if self._paused:
                return False
            self._inflight.pop(block.index, None)
            if self._done[block.index]:
                self.stats.duplicates += 1
                log.debug("ignoring duplicate block %d", block.index)
                return False
            os.pwrite(self._fd, block.data, block.index * self.block_size)
            if self.claimed is not None:
                self.claimed[block.index] = block.digest
            self._done[block.index] = True
            self._remaining -= 1
            self._unsaved += 1
            self.stats.received += 1
            self._last_progress = time.monotonic()
            if self._loop_has_work():
                self._cond.notify()
        return True

    def _loop_has_work(self) -> bool:
        """Whether the download thread must act now (call with the lock held). It is woken only then:
        waking it for every block cost the network thread as much CPU as hashing the block."""
        return (self._remaining == 0 or self._unsaved >= self._persist_blocks or self._pause_after is not None
                or self._can_refill())

    def _can_refill(self) -> bool:
        """Room in the window and a block neither stored nor in flight (so at or past the cursor)."""
        return len(self._inflight) <= self._refill_at and self._remaining > len(self._inflight)

    @property
    def _refill_at(self) -> int:
        """In flight at most this many blocks: ask for more, in full requests (half the window when that is
        smaller): at 200 MB/s of 128 KiB blocks, half requests were 50 a second, the fleet's per-device limit."""
        return self.window - max(1, min(self.window // 2, MAX_BLOCKS_PER_REQUEST))  # below window: room for one

    def _forget_inflight(self, indices: list[int] | None = None) -> None:
        """Ask again for these blocks in flight (all by default): after a reconnect, a disconnect, a timeout."""
        for i in list(self._inflight) if indices is None else indices:
            del self._inflight[i]
        self._cursor = 0  # they are below the cursor and neither stored nor in flight now

    def reconnected(self) -> None:
        """The connection was re-established: ask again for everything still in flight."""
        with self._cond:
            self._forget_inflight()
            self._cond.notify_all()

    # --- the download loop (installer thread) --------------------------------------------

    def _next_request(self, now: float) -> BlockRequest | None:
        if len(self._inflight) > self._refill_at:
            return None
        batch: list[int] = []
        room = min(self.window - len(self._inflight), MAX_BLOCKS_PER_REQUEST)
        i = self._cursor  # scan on from where the last request stopped: O(blocks) per download, not per request
        while i < self.count and len(batch) < room:
            if not self._done[i] and i not in self._inflight:
                batch.append(i)
            i += 1
        self._cursor = i
        if not batch:
            return None
        for i in batch:
            self._inflight[i] = now
        self.stats.requests += 1
        self.stats.requested_blocks.extend(batch)
        return BlockRequest(sha256=self.sha256, blocks=batch, block_size=self.block_size)

    def run(self) -> Path:
        """Block until every block is stored (after a recheck: every bad block fetched again); the staging file.
        TransferError on stall. Nothing is hashed here unless `recheck` (see the module's docstring)."""
        pause_after = self._pause_after = pause_blocks()
        if pause_after is not None:  # test hook: never have the whole file in flight before pausing
            self.window = max(1, min(self.window, pause_after))
        try:
            if self._recheck:
                self._mark_bad_blocks()
            self._fetch_missing(pause_after)
            # The file is complete: make it durable (a power cut before verifying must not leave a torn file)
            # but leave the block list as last saved. Its atomic write costs two more journal commits (two
            # thirds of this fsync's time on ext4), and a restart before verifying re-fetches the tail at most.
            os.fsync(self._fd)
        finally:
            self._inflight.clear()
        if self._progress:
            self._progress(1.0)
        return self.part_path

    def _mark_bad_blocks(self) -> None:
        """The bundle failed its signed check: hash every block of the complete file against its listed SHA-256
        (the block list on disk may miss the tail: run() does not save it at the end) and mark the bad ones
        missing, saved so a restart does not trust them either. stats.forged: how many."""
        listed = self._digests or self.claimed or []
        bad = set(bad_blocks(self._read_at, self.count, self.block_size, self.size, listed))
        self.stats.rechecked = self.count
        if bad:
            log.warning("the bundle failed its signed check: fetching %d bad block(s) again (%s)", len(bad),
                        ", ".join(map(str, sorted(bad)[:8])))
        with self._cond:
            self._done = [i not in bad for i in range(self.count)]
            self._remaining = len(bad)
            self._cursor = 0
            self.stats.forged = len(bad)
        self._save_bitmap()

    def _fetch_missing(self, pause_after: int | None) -> None:
        """Request and store every missing block (the download thread)."""
        self._last_progress = last_save = time.monotonic()
        last_report = 0.0
        with self._cond:
            while self._remaining:
                self.stats.wakeups += 1
                if self._cancel.is_set():
                    raise TransferCancelled("download abandoned")
                now = time.monotonic()
                connected = self._is_connected()
                if not connected:
                    self._forget_inflight()
                    self._last_progress = now  # a broker outage is not a stall
                else:
                    stale = [i for i, t in self._inflight.items() if now - t > self.retry_timeout_s] \
                        if now - self._last_progress > self.retry_timeout_s else []
                    if stale:
                        self.stats.timeouts += 1
                        log.info("no block for %.1fs: asking again for %d blocks", self.retry_timeout_s, len(stale))
                        self._forget_inflight(stale)
                    if now - self._last_progress > self.stall_timeout_s:
                        raise TransferError(
                            f"download stalled: no block received for {self.stall_timeout_s:.0f}s "
                            f"({sum(self._done)}/{self.count} blocks)"
                        )
                    while (request := self._next_request(now)) is not None:
                        self._cond.release()  # never publish while holding the lock on_frame needs
                        try:
                            self._send(request)
                        finally:
                            self._cond.acquire()
                if self._unsaved >= self._persist_blocks or (self._unsaved and now - last_save > self._persist_every_s):
                    self._cond.release()
                    try:
                        self._save_bitmap()
                    finally:
                        self._cond.acquire()
                    last_save = now
                if self._progress and now - last_report > 1.0:
                    self._progress(1.0 - self._remaining / self.count)
                    last_report = now
                if pause_after is not None and self.count - self._remaining >= pause_after:
                    self._paused = True
                    self._cond.release()
                    self._save_bitmap()
                    pause_point(f"blocks:{pause_after}", self._ota_dir, force=True)
                # a wake-up sent while the lock was released (sending, saving) is not lost: check first
                if not (self._remaining == 0 or self._unsaved >= self._persist_blocks
                        or (connected and self._can_refill())):
                    self._cond.wait(0.1)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass

    def discard(self) -> None:
        """Delete the staging file and its bitmap (after install, or when the file is bad)."""
        self.close()
        discard_staging(self.part_path.parent, self.sha256)


__all__ = ["BlockDownloader", "TransferCancelled", "TransferError", "TransferStats", "clean_staging", "discard_staging",
           "pause_point"]
