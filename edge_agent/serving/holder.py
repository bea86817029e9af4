"""The model the endpoint serves, swapped atomically while requests keep coming.

A request takes the current model with `use()` and keeps it to the end, even if an OTA switch
replaces it meanwhile; `swap()` changes the reference in one assignment (new requests go to the
new model at once) and then waits until no request still runs on the old one, so its owner may
close the old session right after. No request fails or sees a half-loaded model.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Iterator, Protocol

from ..bundle import Manifest
from ..runtimes import ModelSession

_generation = count(1_000_000)  # apart from edge_agent.ota.live's counter; only identity matters


class Served(Protocol):
    """What the endpoint needs of a model: the daemon's LiveModel and ServedModel both fit."""

    manifest: Manifest
    session: ModelSession
    generation: int


@dataclass
class ServedModel:
    """A model loaded by `edge-agent serve-model` (no slots, no fleet)."""

    manifest: Manifest
    session: ModelSession
    generation: int = field(default_factory=lambda: next(_generation))


class ModelHolder:
    """The served model reference plus a count of requests in flight per model."""

    def __init__(self, model: Served | None = None) -> None:
        self._current: Served | None = model
        self._inflight: dict[int, int] = {}
        self._cond = threading.Condition()
        self.swaps = 0

    @property
    def current(self) -> Served | None:
        return self._current

    @contextmanager
    def use(self) -> Iterator[Served | None]:
        """The current model, held for the duration (None when nothing is served yet)."""
        with self._cond:
            model = self._current
            if model is not None:
                self._inflight[model.generation] = self._inflight.get(model.generation, 0) + 1
        try:
            yield model
        finally:
            if model is not None:
                with self._cond:
                    left = self._inflight[model.generation] - 1
                    if left:
                        self._inflight[model.generation] = left
                    else:
                        del self._inflight[model.generation]
                    self._cond.notify_all()

    def swap(self, new: Served | None, wait_s: float = 30.0) -> Served | None:
        """Serve `new` from now on; return the previous model once no request runs on it (or after wait_s)."""
        with self._cond:
            old, self._current = self._current, new
            self.swaps += 1
            if old is None or old is new:
                return old
            deadline = time.monotonic() + wait_s
            while self._inflight.get(old.generation, 0) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
        return old

    def inflight(self) -> dict[int, Any]:
        with self._cond:
            return dict(self._inflight)
