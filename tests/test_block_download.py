"""The MQTT block downloader on its own: real frames of a real file, fed from a thread as paho's network
thread feeds them. What the fast path may not break: the block list on disk never claims a block that
is not written, a restart re-fetches only what the list does not hold, a bad block is never written,
and the block frame's bytes on the wire stay the ones every released fleet server and agent speak."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from pathlib import Path

import pytest

from edge_agent.ota.block_frames import Block, BlockRequest, decode_block, encode_block
from edge_agent.ota.protocol import ProtocolError
from edge_agent.ota.transfer import BlockDownloader

BLOCK = 1024
WAIT = 30.0


class Feeder:
    """Answers BlockRequests from `data` on its own thread, one frame at a time like a network thread.

    `serve` limits how many blocks are ever answered (the rest of the pipe stalls); `gap_s` spaces frames;
    `corrupt` indices are answered once with a well-formed frame whose data does not match the deployment's hash
    (its header claims the wrong data's own hash: forged); `damaged` ones with a right frame whose data bytes
    were then changed (the header's claim no longer matches); `always` makes either happen every time."""

    def __init__(self, data: bytes, sha: str, serve: int | None = None, gap_s: float = 0.0,
                 corrupt: frozenset[int] = frozenset(), as_view: bool = False, damaged: frozenset[int] = frozenset(),
                 always: bool = False) -> None:
        self.data, self.sha, self.serve, self.gap_s, self.corrupt = data, sha, serve, gap_s, set(corrupt)
        self.damaged, self.always = set(damaged), always
        self.as_view = as_view  # frames as the agent's paho decoder hands them: read-only views of the packet
        self.total = -(-len(data) // BLOCK)
        self.requests: "queue.Queue[BlockRequest | None]" = queue.Queue()
        self.asked: list[int] = []
        self.sent = 0
        self.dl: BlockDownloader | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send(self, req: BlockRequest) -> None:
        self.asked.extend(req.blocks)
        self.requests.put(req)

    def start(self, dl: BlockDownloader) -> "Feeder":
        self.dl = dl
        self._thread.start()
        return self

    def stop(self) -> None:
        self.requests.put(None)
        self._thread.join(WAIT)

    def _run(self) -> None:
        while (req := self.requests.get()) is not None:
            for i in req.blocks:
                if self.serve is not None and self.sent >= self.serve:
                    continue
                piece = self.data[i * BLOCK:(i + 1) * BLOCK]
                if i in self.corrupt:
                    if not self.always:
                        self.corrupt.discard(i)  # once: the re-request gets the right data
                    piece = bytes(b ^ 0xFF for b in piece)
                self.sent += 1
                assert self.dl is not None
                frame = encode_block(Block(self.sha, i, self.total, piece))
                if i in self.damaged:
                    if not self.always:
                        self.damaged.discard(i)
                    frame = frame[:-1] + bytes([frame[-1] ^ 0x01])  # header intact, last data byte wrong
                self.dl.on_frame(memoryview(bytearray(frame)).toreadonly() if self.as_view else frame)
                if self.gap_s:
                    time.sleep(self.gap_s)


def bundle_file(tmp_path: Path, blocks: int) -> tuple[bytes, str, list[bytes]]:
    data = os.urandom(blocks * BLOCK - 100)  # the last block is short
    digests = [hashlib.sha256(data[i:i + BLOCK]).digest() for i in range(0, len(data), BLOCK)]
    return data, hashlib.sha256(data).hexdigest(), digests


def listed(bitmap: Path) -> set[int]:
    try:
        bits = bytes.fromhex(json.loads(bitmap.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return set()
    return {i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1}


def download(dl: BlockDownloader, feeder: Feeder, sha: str) -> None:
    """Run `dl` to the end with `feeder` answering; the staged file must be the bundle."""
    assert hashlib.sha256(first_run(dl, feeder)).hexdigest() == sha


def run_in_thread(dl: BlockDownloader) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["path"] = dl.run()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_the_download_thread_is_woken_to_refill_not_for_every_block(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 240)
    feeder = Feeder(data, sha, gap_s=0.001)  # frames spaced like a network's: each one could wake the loop
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests, window=64)
    t0 = time.monotonic()
    download(dl, feeder, sha)
    elapsed = time.monotonic() - t0
    assert dl.stats.received == 240 and sorted(feeder.asked) == list(range(240))  # each block asked for once
    # a refill every 32 blocks (half a request), a save, and the loop's 0.1 s wait timing out on a slow machine:
    # woken for every block it was 238 times for these 240 blocks
    assert dl.stats.wakeups <= 20 + elapsed / 0.1, (dl.stats, elapsed)


def test_the_block_list_is_saved_every_n_blocks_and_a_restart_fetches_only_the_rest(tmp_path):
    data, sha, digests = bundle_file(tmp_path, 100)
    feeder = Feeder(data, sha, serve=37)  # then the pipe stalls, as when the agent is killed
    # persisted every 8 blocks; the timer (an hour) never fires in this test, so only the count can save
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests,
                         persist_bytes=8 * BLOCK, persist_every_s=3600.0, stall_timeout_s=WAIT)
    bitmap = dl.bitmap_path
    feeder.start(dl)
    thread, out = run_in_thread(dl)
    try:
        deadline = time.monotonic() + WAIT
        while len(listed(bitmap)) < 32 and time.monotonic() < deadline:
            time.sleep(0.01)
        saved = listed(bitmap)
        assert len(saved) >= 32 and saved <= dl.completed, (len(saved), dl.stats)
        # what the list claims is on disk, byte for byte (written before it is listed)
        part = dl.part_path.read_bytes()
        assert all(part[i * BLOCK:(i + 1) * BLOCK] == data[i * BLOCK:(i + 1) * BLOCK] for i in saved)
    finally:
        dl._cancel.set()  # noqa: SLF001 - the agent's cancel event: a newer deployment or a stop
        thread.join(WAIT)
        feeder.stop()
        dl.close()
    assert "error" in out and not out.get("path")
    saved = listed(bitmap)

    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=digests)
    assert dl2.stats.resumed_with == len(saved)
    download(dl2, again, sha)
    assert not set(again.asked) & saved and set(again.asked) | saved == set(range(100))


def first_run(dl: BlockDownloader, feeder: Feeder) -> bytes:
    """Run `dl` to the end with `feeder` answering; the staged file's bytes (not checked: nothing is hashed)."""
    feeder.start(dl)
    try:
        path = dl.run()
    finally:
        feeder.stop()
        dl.close()
    return path.read_bytes()


@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "packet-view"])
def test_a_forged_block_is_stored_unhashed_then_a_recheck_fetches_it_alone(tmp_path, as_view):
    """Blocks are not hashed as they arrive nor after (the device's one SHA-256 pass is installing's check of the
    members): a forged block is stored; when that check fails, the update comes back with `recheck`, the stored
    blocks are hashed against the deployment's list and the forged ones fetched again, they alone."""
    data, sha, digests = bundle_file(tmp_path, 40)
    feeder = Feeder(data, sha, corrupt=frozenset({3, 17}), as_view=as_view)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests)
    assert first_run(dl, feeder) != data
    assert dl.stats.received == 40 and dl.stats.rechecked == 0 and dl.stats.forged == 0
    again = Feeder(data, sha, as_view=as_view)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=digests,
                          recheck=True)
    download(dl2, again, sha)
    assert dl2.stats.rechecked == 40 and dl2.stats.forged == 2 and sorted(again.asked) == [3, 17]


# The frame of (sha256 "ab" * 32, index 2, total 3, data b"edgekit"): pinned, so an agent and a fleet server of
# different releases keep understanding each other. Changing it needs a new magic (EKB2) decoded beside EKB1.
GOLDEN_FRAME = (
    b'EKB1\x00\x00\x00\xbc{"sha256":"abababababababababababababababababababababababababababababababab",'
    b'"index":2,"total":3,"size":7,"block_sha256":"f7c49a99f047a3659ae1d2974d32206cb514421b227a53a5c191f33569d84407"}'
    b"edgekit"
)


def test_the_block_frame_on_the_wire_is_unchanged():
    assert encode_block(Block("ab" * 32, 2, 3, b"edgekit")) == GOLDEN_FRAME
    block = decode_block(GOLDEN_FRAME)
    assert (block.sha256, block.index, block.total, bytes(block.data)) == ("ab" * 32, 2, 3, b"edgekit")
    assert block.digest == hashlib.sha256(b"edgekit").digest()
    claimed = decode_block(GOLDEN_FRAME, check_digest=False)  # the agent's download: the header's claim, not hashed
    assert claimed.digest == block.digest and bytes(claimed.data) == b"edgekit"
    with pytest.raises(ProtocolError):
        decode_block(GOLDEN_FRAME.replace(b'"block_sha256":"f7', b'"block_sha256":"F7'), check_digest=False)


def test_decode_block_hands_out_a_view_of_the_frame_not_a_copy():
    frame = encode_block(Block("ab" * 32, 0, 1, os.urandom(4096)))
    block = decode_block(frame)
    assert isinstance(block.data, memoryview) and block.data.obj is frame
    with pytest.raises(TypeError):
        block.data[0] = 0  # read-only: nothing downstream can change a checked block


def test_a_window_of_one_block_downloads_one_block_at_a_time(tmp_path):
    """The smallest window (a tiny memory budget, or the kill test's hook): one request per block, no spinning."""
    data, sha, digests = bundle_file(tmp_path, 12)
    feeder = Feeder(data, sha)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send, block_digests=digests, window=1)
    download(dl, feeder, sha)
    assert feeder.asked == list(range(12)) and dl.stats.requests == 12
    assert dl.stats.wakeups <= 12 * 3, dl.stats  # a few per block, never a busy loop


@pytest.mark.parametrize("listed", [True, False], ids=["deployment-list", "frame-claims"])
def test_a_damaged_frame_is_found_by_a_recheck_and_only_its_block_is_fetched_again(tmp_path, listed):
    """Valid header, wrong data bytes: stored (no hash on the network thread); a recheck finds it by the
    deployment's list or, without one, by the hash its own header claimed (handed from the first run, as the
    agent's update worker does); re-fetched alone."""
    data, sha, digests = bundle_file(tmp_path, 30)
    feeder = Feeder(data, sha, damaged=frozenset({0, 11, 29}), as_view=True)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=feeder.send,
                         block_digests=digests if listed else None)
    assert first_run(dl, feeder) != data
    again = Feeder(data, sha)
    dl2 = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send,
                          block_digests=digests if listed else None, claimed=dl.claimed, recheck=True)
    download(dl2, again, sha)
    assert dl2.stats.forged == 3 and sorted(again.asked) == [0, 11, 29]  # one re-request each, nothing else


def test_a_recheck_that_finds_every_block_as_listed_fetches_nothing(tmp_path):
    """The file is what the fleet listed (a bundle bad at the source): nothing to fetch, stats.forged == 0, which
    tells the update worker that another round cannot help (the check's own error then fails the update)."""
    data, sha, digests = bundle_file(tmp_path, 20)
    download(BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=(f := Feeder(data, sha)).send,
                             block_digests=digests), f, sha)
    again = Feeder(data, sha)
    dl = BlockDownloader(tmp_path, sha, len(data), BLOCK, send_request=again.send, block_digests=digests,
                         recheck=True)
    download(dl, again, sha)
    assert dl.stats.rechecked == 20 and dl.stats.forged == 0 and again.asked == []
