"""Hand-over points between pipeline stages (threads).

`BoundedChannel` blocks the producer when full: nothing is lost (files, image folders).
`LatestSlot` keeps only the newest item: a put over an unread item drops it and counts the drop
(live cameras and streams, so a slow model always gets the freshest frame).
Both end with `close()`: `get()` returns `CLOSED` once the channel is closed and empty.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

CLOSED = object()
EMPTY = object()


class Channel:
    """Common interface: put(item) -> bool (False when stopped), get(timeout) -> item | EMPTY | CLOSED."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stopped = False

    def close(self) -> None:
        """No more items will come; readers drain what is left, then get CLOSED."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Abort: wake every waiter; puts are refused from now on."""
        with self._cond:
            self._stopped = True
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float = 0.1) -> Any:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return CLOSED if self._closed else EMPTY

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class BoundedChannel(Channel):
    """A FIFO of at most `maxsize` items; put blocks while full (back-pressure, no loss)."""

    def __init__(self, maxsize: int = 4) -> None:
        super().__init__()
        self.maxsize = max(1, maxsize)

    def put(self, item: Any) -> bool:
        with self._cond:
            while len(self._items) >= self.maxsize and not self._stopped:
                self._cond.wait(0.1)
            if self._stopped:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True


class LatestSlot(Channel):
    """One slot; a put replaces an unread item and calls `on_drop(old_item)`."""

    def __init__(self, on_drop: Callable[[Any], None] | None = None) -> None:
        super().__init__()
        self.on_drop = on_drop
        self.dropped = 0

    def put(self, item: Any) -> bool:
        with self._cond:
            if self._stopped:
                return False
            if self._items:
                old = self._items.popleft()
                self.dropped += 1
                if self.on_drop:
                    self.on_drop(old)
            self._items.append(item)
            self._cond.notify_all()
            return True


class ReorderChannel(Channel):
    """Results of several inference streams, handed on in the order their frames were taken.

    Each stream takes a frame with a ticket (0, 1, 2, ... in taking order) and puts its result back under that
    ticket, `None` for a frame that failed; a result waits here until every earlier ticket is in, so sinks see
    frames in order whichever stream finished first. At most `maxsize` released results wait for the reader; a
    result that is out of order never waits (its stream would hold up the one everything waits for)."""

    def __init__(self, maxsize: int = 4) -> None:
        super().__init__()
        self.maxsize = max(1, maxsize)
        self._pending: dict[int, Any] = {}
        self._next = 0

    def put_at(self, ticket: int, item: Any) -> bool:
        """Put the result of the frame taken with `ticket` (None: skip it); False when stopped."""
        with self._cond:
            while ticket == self._next and len(self._items) >= self.maxsize and not self._stopped:
                self._cond.wait(0.1)
            if self._stopped:
                return False
            self._pending[ticket] = item
            self._release(self._next)
            self._cond.notify_all()
            return True

    def _release(self, upto: float) -> None:
        while self._pending and (self._next in self._pending or self._next < upto):
            item = self._pending.pop(self._next, None)
            self._next += 1
            if item is not None:
                self._items.append(item)

    def close(self) -> None:
        """No more results: what waits for a ticket that will never come is released in ticket order."""
        with self._cond:
            self._release(max(self._pending, default=-1) + 1)
        super().close()
