"""Which of a device's reported states is the newest: the one rule the agent numbers by and the fleet orders by.

A device's wall clock cannot order its reports: an RTC running fast that NTP then corrects, or a Pi
without RTC, steps it back, and every report after the step looked older than the stored one. So
the agent numbers its reports: `boot_id` (random, new each time the agent starts) and `seq`
(1, 2, 3, ... within that start). A receiver keeps a report unless it is an earlier `seq` of the
same `boot_id`; a new `boot_id` starts a new series and is taken. Reports without the pair (agents
before it) fall back to the clock rule: one older by less than REORDER_WINDOW seconds arrived
out of order and is ignored; older by more means the clock was reset, so it is taken.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from dataclasses import dataclass

REORDER_WINDOW = 300.0  # seconds; the clock rule for reports that carry no (boot_id, seq)


@dataclass(frozen=True)
class ReportStamp:
    """What orders one reported state: the device's clock and, from agents that send them, its series."""

    updated_at: float
    boot_id: str | None = None
    seq: int | None = None

    @property
    def numbered(self) -> bool:
        return self.boot_id is not None and self.seq is not None


def supersedes(incoming: ReportStamp, stored: ReportStamp | None) -> bool:
    """Whether `incoming` replaces `stored` (None: nothing stored yet). An equal report (a QoS 1
    redelivery, two servers) is taken again, which changes nothing."""
    if stored is None:
        return True
    if incoming.numbered and stored.numbered:
        return incoming.boot_id != stored.boot_id or incoming.seq >= stored.seq  # type: ignore[operator]
    if incoming.numbered:
        return True  # the agent was upgraded: its first numbered report starts a series
    return not stored.updated_at - REORDER_WINDOW < incoming.updated_at < stored.updated_at


class ReportSequence:
    """The agent's numbering: one boot id per agent start, `seq` rising by one per report built."""

    def __init__(self, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or uuid.uuid4().hex
        self._count = itertools.count(1)
        self.lock = threading.Lock()  # held while a report is numbered and published: sent in `seq` order

    def next(self) -> int:
        return next(self._count)
