"""What monitors see of live traffic, whichever part of the agent answered it: one interface.

Two parts of the agent answer live inputs with the served model: the camera/video feed
(pipeline.live_feed, pipeline.runner) and the local inference API (edge_agent.serving). Both hand
every answered input to their observers as a `LiveSample`, and both are `LiveInputs`
(add_observer/remove_observer), so the drift monitor and a shadow run (edge_agent.monitor) watch
camera frames and served requests alike without knowing which is which.

A sample keeps its input as it came in (`LiveInput`: a camera frame, an encoded image, client
tensors), because a shadow run must give the SAME input to another model, whose input size,
colour order or layout may differ: `sample.input.prepare(new_manifest)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ..bundle import Manifest
from .detection import FrameGeometry

log = logging.getLogger(__name__)


class LiveInput(Protocol):
    """An input as it arrived, preparable for any model (the active one was given exactly this)."""

    def prepare(self, manifest: Manifest) -> tuple[dict[str, np.ndarray], FrameGeometry]:
        """Runtime feeds for `manifest`'s model (one row), and how its boxes map back to the input."""


@dataclass(frozen=True)
class LiveSample:
    """One input the served model answered, as monitors see it (edge_agent.monitor: drift, shadow runs)."""

    input: LiveInput
    model: Any  # the served model (manifest, generation, bundle_dir); None in a plain pipeline
    feeds: dict[str, np.ndarray]  # the runtime feeds it ran on (bundle layout; first axis = rows)
    outputs: list[np.ndarray]
    latency_ms: float  # the model's run
    result: dict[str, Any] | None = None  # the Postprocessor's result (row 0) when its producer made one
    geometry: FrameGeometry | None = None  # to postprocess `outputs` when `result` is None


Observer = Callable[[LiveSample], None]


class LiveInputs(Protocol):
    """A part that answers live inputs and tells observers (LiveFeed, serving.InferenceService)."""

    def add_observer(self, observer: Observer) -> None: ...

    def remove_observer(self, observer: Observer) -> None: ...


class Observers:
    """The observer list of a LiveInputs: replaced, never mutated, so producers read it lock-free.

    `notify` runs them on the producer's thread; they must be quick (a shadow run hands the sample
    to its own worker) and cannot break the producer: one that raises is logged and skipped.
    """

    def __init__(self) -> None:
        self.observers: tuple[Observer, ...] = ()

    def add_observer(self, observer: Observer) -> None:
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: Observer) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def notify(self, sample: LiveSample) -> None:
        for observe in self.observers:
            try:
                observe(sample)
            except Exception:  # noqa: BLE001 - a monitor never stops the served model
                log.exception("live input observer %r failed", observe)
