"""Serve bundle blocks over MQTT: BlockRequest on .../blocks/get -> block frames on .../blocks/data.

A device asks for the blocks it still needs (by the bundle file's SHA-256 and a block size);
each answer is one `encode_block` frame on that device's own blocks/data topic, read from
the published bundle file in the fleet store. Requests are handled on a worker thread with
a bounded queue so the MQTT network loop never blocks on disk; per-device token buckets
limit how fast one device can pull. Malformed requests, foreign topics, unknown bundles and
out-of-range blocks are logged and ignored.

A frame depends only on the bundle, the block size and the index, never on the device, and bundles
are content-addressed (immutable): frames are kept in a byte-bounded LRU cache, so a rollout to
1,000 devices reads, hashes and frames each block once instead of 1,000 times.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt

from edge_agent.ota.protocol import ProtocolError, Topics
from edge_agent.ota.block_frames import Block, BlockRequest, encode_block

from .rollout.desired import block_digests, block_size_for

log = logging.getLogger(__name__)

BundleLookup = Callable[[str], "tuple[Path, int] | None"]  # sha256 -> (file, size) or None


@dataclass
class BlockLimits:
    """Abuse limits: largest block, request rate and burst per device, request queue depth."""

    max_block_size: int = 1 << 20
    requests_per_second: float = 50.0
    burst: int = 100
    queue_size: int = 2000
    frame_cache_bytes: int = 64 << 20  # encoded frames kept for the next device that asks


class _FrameCache:
    """Least-recently-used frames by (bundle sha256, block size, index), at most `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget, self.size = budget, 0
        self._frames: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
        return frame

    def put(self, key: tuple[str, int, int], frame: bytes) -> None:
        if len(frame) > self.budget or key in self._frames:
            return
        self._frames[key] = frame
        self.size += len(frame)
        while self.size > self.budget:
            _, old = self._frames.popitem(last=False)
            self.size -= len(old)


class _Bucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class BlockServer:
    """Answers block requests for the bundles `lookup` knows. Call `handle(msg)` from on_message."""

    def __init__(self, client: mqtt.Client, topics: Topics, lookup: BundleLookup,
                 limits: BlockLimits | None = None, qos: int = 1) -> None:
        self.client, self.topics, self.lookup = client, topics, lookup
        self.limits = limits or BlockLimits()
        self.qos = qos
        self._queue: queue.Queue[tuple[str, BlockRequest] | None] = queue.Queue(self.limits.queue_size)
        self._buckets: dict[str, _Bucket] = {}
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "blocks": 0, "bytes": 0, "ignored": 0, "cached": 0}
        self._frames = _FrameCache(self.limits.frame_cache_bytes)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="block-server", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    def subscription(self) -> str:
        return self.topics.all_block_requests()

    def handle(self, msg: mqtt.MQTTMessage) -> bool:
        """Check and enqueue one request message; False (with a log line) when it is ignored."""
        try:
            device_id, kind = self.topics.parse(msg.topic)
            if kind != "blocks/get":
                raise ProtocolError(f"topic {msg.topic!r} is not a block request topic")
            req = BlockRequest.parse(msg.payload)
        except ProtocolError as exc:
            return self._ignore("malformed block request on %s: %s", msg.topic, exc)
        if req.block_size > self.limits.max_block_size:
            return self._ignore("block request from %s asks for %d-byte blocks, over the %d limit",
                                device_id, req.block_size, self.limits.max_block_size)
        bucket = self._buckets.setdefault(device_id, _Bucket(self.limits.requests_per_second, self.limits.burst))
        if not bucket.take():
            return self._ignore("block request from %s over its rate limit; dropped", device_id)
        try:
            self._queue.put_nowait((device_id, req))
        except queue.Full:
            return self._ignore("block request queue full; dropped a request from %s", device_id)
        return True

    def _ignore(self, fmt: str, *args: object) -> bool:
        self.stats["ignored"] += 1
        log.warning(fmt, *args)
        return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.serve(*item)
            except Exception:  # noqa: BLE001 - one bad request must not stop the server
                log.exception("failed to serve block request from %s", item[0])

    @staticmethod
    def _digests(path: Path, req: BlockRequest, size: int) -> list[bytes] | None:
        """The block hashes the deployment listed (computed once per bundle, when its desired state was
        made), so a frame is not hashed again; None for another block size than deployments use (a
        device asking odd sizes must not make the server hash whole files)."""
        if req.block_size != block_size_for(size):
            return None
        return block_digests(path, req.sha256, req.block_size)

    def serve(self, device_id: str, req: BlockRequest) -> int:
        """Publish the requested blocks to the device; returns how many were sent."""
        self.stats["requests"] += 1
        found = self.lookup(req.sha256)
        if found is None:
            self._ignore("block request from %s for unknown bundle %s", device_id, req.sha256)
            return 0
        path, size = found
        total = max(1, -(-size // req.block_size))
        topic = self.topics.block_data(device_id)
        sent = 0
        fh = None
        try:
            for index in dict.fromkeys(req.blocks):  # duplicates once, order kept
                if index >= total:
                    self._ignore("block request from %s for block %d of %d; ignored", device_id, index, total)
                    continue
                key = (req.sha256, req.block_size, index)
                frame = self._frames.get(key)
                if frame is None:
                    fh = fh or open(path, "rb")  # noqa: SIM115 - closed below; not opened when all are cached
                    fh.seek(index * req.block_size)
                    frame = encode_block(Block(sha256=req.sha256, index=index, total=total,
                                               data=fh.read(req.block_size)),
                                         digests[index] if (digests := self._digests(path, req, size)) else None)
                    self._frames.put(key, frame)
                else:
                    self.stats["cached"] += 1
                self.client.publish(topic, frame, qos=self.qos)
                sent += 1
                self.stats["blocks"] += 1
                self.stats["bytes"] += min(req.block_size, size - index * req.block_size)
        except OSError as exc:  # deleted from the store mid-rollout: one line, not a traceback per request per device
            self._ignore("block request from %s: bundle %s file unreadable (%s)", device_id, req.sha256[:12],
                         exc.strerror or exc)
        finally:
            if fh is not None:
                fh.close()
        return sent
