"""The serving core both protocols call: check a request against the served model, queue it through the
batcher, tell observers. Protocol adapters only translate HTTP bodies to and from these calls.

Observers (`add_observer`) see every successful inference: the model it ran on, the runtime feeds and
the outputs. They run on the request's thread after the answer is computed, must be quick (hand the
data to a queue) and cannot break a request: an observer that raises is logged and skipped. This is
where a shadow run or a drift monitor samples live traffic without touching the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import one_line
from .batcher import BatchPolicy, DynamicBatcher
from .errors import NotFound, Unavailable
from .holder import ModelHolder, Served
from .images import image_answer, image_feeds
from .tensors import to_feeds
from ..telemetry.serving_stats import ServingStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceEvent:
    """One served inference, as observers see it."""

    model: Served
    feeds: dict[str, np.ndarray]  # runtime feeds (bundle layout and dtype)
    outputs: list[np.ndarray]
    kind: str  # "tensor" | "image"


Observer = Callable[[InferenceEvent], None]


class InferenceService:
    """Served model + batcher + observers + statistics."""

    def __init__(self, holder: ModelHolder, policy: BatchPolicy = BatchPolicy(),
                 stats: ServingStats | None = None) -> None:
        self.holder = holder
        self.stats = stats or ServingStats()
        self.batcher = DynamicBatcher(holder, policy, on_batch=self.stats.batch)
        self.stats.queue_depth = self.batcher.depth
        self._observers: list[Observer] = []

    def add_observer(self, fn: Observer) -> None:
        self._observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        self._observers.remove(fn)

    def model(self, name: str | None = None, version: str | None = None) -> Served:
        """The served model, checked against a route's name and version (404/503 otherwise)."""
        model = self.holder.current
        if model is None:
            raise Unavailable("no model is being served yet")
        m = model.manifest
        if name is not None and name != m.name:
            raise NotFound(f"unknown model {name!r}; this device serves {m.name!r}")
        if version not in (None, "", str(m.version)):
            raise NotFound(f"version {version} of {m.name!r} is not served; the active version is {m.version}")
        return model

    def infer_tensors(self, arrays: dict[str, np.ndarray], name: str | None = None,
                      version: str | None = None) -> tuple[list[np.ndarray], Served]:
        """Client tensors (source layout) -> outputs in manifest order, and the model they ran on."""
        feeds, batch = to_feeds(arrays, self.model(name, version).manifest)
        outputs, model = self.batcher.submit(feeds, batch)
        self._notify(InferenceEvent(model, feeds, outputs, "tensor"))
        return outputs, model

    def infer_image(self, data: bytes, name: str | None = None, version: str | None = None,
                    top_k: int | None = None) -> tuple[dict[str, Any], Served]:
        """An encoded image -> the CLI's answer for it, and the model it ran on."""
        feeds, geometry = image_feeds(data, self.model(name, version).manifest)
        outputs, model = self.batcher.submit(feeds, 1)
        self._notify(InferenceEvent(model, feeds, outputs, "image"))
        return image_answer(outputs, model.manifest, geometry, top_k), model

    def _notify(self, event: InferenceEvent) -> None:
        for fn in list(self._observers):
            try:
                fn(event)
            except Exception as exc:  # noqa: BLE001 - an observer never breaks a request
                log.warning("serving observer %r failed: %s", fn, one_line(exc))

    def close(self) -> None:
        self.batcher.close()
