"""The bounded queue between the fleet server's MQTT loop and its registry writer.

The MQTT loop must never wait for the database (a broker drops QoS 1 messages for a client that
lags), so device messages are queued; a database slower than the devices must not grow that queue
without end either. Every reported state and telemetry message carries the device's whole state,
so a newer one makes an older one of the same device redundant, except where the older one marks a
change the registry keeps as history. The policy:

* never dropped: presence messages, and reported states that change the device's phase,
  deployment or current bundle (its update history: each becomes a device event);
* merged: a reported state that changes none of those (download progress, drift, shadow figures)
  replaces that device's previous such report while it is still queued; a telemetry message
  replaces that device's queued telemetry;
* dropped when `max_updates` of those mergeable messages are queued: the oldest one (counted in
  `dropped`), whatever device it came from.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

MAX_UPDATES = 10_000  # mergeable messages queued at most (a few MB at ~300 bytes each)

Parse = Callable[[str], "tuple[str, str]"]  # topic -> (device id, kind); ValueError if not a device topic


@dataclass
class _Entry:
    topic: str
    payload: bytes
    mergeable: bool
    live: bool = True


def _milestone(payload: bytes) -> tuple | None:
    """What a reported state changes that must reach the registry's history; None if it is malformed
    (the writer logs it)."""
    try:
        o = json.loads(payload)
        current = o.get("current") or {}
        return o["phase"], o.get("deployment_id"), current.get("sha256") if isinstance(current, dict) else current
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class ReportInbox:
    """put() from the MQTT loop never blocks; get() hands the writer messages in arrival order."""

    def __init__(self, parse: Parse, max_updates: int = MAX_UPDATES) -> None:
        self._parse = parse
        self.max_updates = max_updates
        self._cond = threading.Condition()
        self._queue: deque[_Entry | None] = deque()
        self._updates: deque[_Entry] = deque()  # the mergeable entries, oldest first (some already gone)
        self._live_updates = 0
        self._latest: dict[tuple[str, str], _Entry] = {}  # (device, kind) -> its newest queued entry
        self._milestones: dict[str, tuple] = {}  # device -> its last reported milestone seen
        self.merged = 0
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for e in self._queue if e is None or e.live)

    def put(self, topic: str, payload: bytes) -> None:
        try:
            device, kind = self._parse(topic)
        except ValueError:
            device, kind = "", "?"
        with self._cond:
            mergeable = self._mergeable(device, kind, payload)
            latest = self._latest.get((device, kind))
            if mergeable and latest is not None and latest.live and latest.mergeable:
                latest.payload = payload  # keeps its place: nothing of that device's queued after it is passed
                self.merged += 1
                return
            entry = _Entry(topic, payload, mergeable)
            if kind in ("reported", "telemetry"):
                self._latest[(device, kind)] = entry
            if mergeable:
                self._updates.append(entry)
                self._live_updates += 1
                self._drop_oldest_updates()
            self._queue.append(entry)
            self._cond.notify()

    def _mergeable(self, device: str, kind: str, payload: bytes) -> bool:
        if kind == "telemetry":
            return True
        if kind != "reported" or not payload:
            return False
        milestone = _milestone(payload)
        if milestone is None:
            return False
        before = self._milestones.get(device)
        self._milestones[device] = milestone
        return before == milestone

    def _drop_oldest_updates(self) -> None:
        while self._live_updates > self.max_updates:
            oldest = self._updates.popleft()
            if oldest.live:
                oldest.live = False
                self._live_updates -= 1
                self.dropped += 1

    def close(self) -> None:
        """After what is queued, get() returns None."""
        with self._cond:
            self._queue.append(None)
            self._cond.notify()

    def get(self) -> tuple[str, bytes] | None:
        """The next message (topic, payload), waiting for one; None once closed."""
        with self._cond:
            while True:
                while not self._queue:
                    self._cond.wait()
                entry = self._queue.popleft()
                if entry is None:
                    return None
                if not entry.live:
                    continue
                entry.live = False  # taken: a later message no longer merges into it
                if entry.mergeable:
                    self._live_updates -= 1
                    while self._updates and not self._updates[0].live:
                        self._updates.popleft()
                return entry.topic, entry.payload
