"""The serving core both protocols call: check a request against the served model, queue it through the
batcher, tell observers. Protocol adapters only translate HTTP bodies to and from these calls.

Observers (`add_observer`) see every successful inference as a pipeline.observe.LiveSample, the
interface the camera feed shares: the model it ran on, the runtime feeds, the outputs, the model
run's time, and the request's input as it came (client tensors or an encoded image) so a shadow run
can give the same input to the new model. So the drift monitor and a shadow run count served
requests as live frames (edge_agent.monitor.watch). Observers run on the request's thread after the
answer is computed, must be quick (a shadow run hands the sample to its own worker) and cannot break
a request: one that raises is logged and skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..pipeline.observe import LiveSample, Observer, Observers
from .batcher import BatchPolicy, DynamicBatcher, Prepared
from .errors import NotFound, Unavailable
from .holder import ModelHolder, Served
from .images import ImageInput, image_answer, image_feeds
from .tensors import TensorInput, input_geometry, to_feeds
from ..telemetry.serving_stats import ServingStats

log = logging.getLogger(__name__)


class InferenceService:
    """Served model + batcher + observers + statistics."""

    def __init__(self, holder: ModelHolder, policy: BatchPolicy = BatchPolicy(),
                 stats: ServingStats | None = None) -> None:
        self.holder = holder
        self.stats = stats or ServingStats()
        self.batcher = DynamicBatcher(holder, policy, on_batch=self.stats.batch)
        self.stats.queue_depth = self.batcher.depth
        self._observers = Observers()

    def add_observer(self, fn: Observer) -> None:
        self._observers.add_observer(fn)

    def remove_observer(self, fn: Observer) -> None:
        self._observers.remove_observer(fn)

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
        self.model(name, version)
        outputs, model, run_ms, prepared = self.batcher.submit(lambda m: Prepared(*to_feeds(arrays, m)))
        if self._observers:
            self._observers.notify(LiveSample(TensorInput(arrays), model, prepared.feeds, outputs, run_ms,
                                              geometry=input_geometry(model.manifest)))
        return outputs, model

    def infer_image(self, data: bytes, name: str | None = None, version: str | None = None,
                    top_k: int | None = None) -> tuple[dict[str, Any], Served]:
        """An encoded image -> the CLI's answer for it, and the model it ran on."""
        answer, _, model = self.infer_image_outputs(data, name, version, top_k)
        return answer, model

    def infer_image_outputs(self, data: bytes, name: str | None = None, version: str | None = None,
                            top_k: int | None = None) -> tuple[dict[str, Any], list[np.ndarray], Served]:
        """An encoded image -> the CLI's answer, every output of the model (manifest order), the model it ran on."""
        self.model(name, version)
        outputs, model, run_ms, prepared = self.batcher.submit(lambda m: _image_prepared(data, m))
        geometry = prepared.context
        answer = image_answer(outputs, model.manifest, geometry, top_k)
        if self._observers:
            self._observers.notify(LiveSample(ImageInput(data), model, prepared.feeds, outputs, run_ms, answer,
                                              geometry))
        return answer, outputs, model

    def close(self) -> None:
        self.batcher.close()


def _image_prepared(data: bytes, manifest) -> Prepared:  # noqa: ANN001 - Manifest
    """An image request's feeds for `manifest`, batch 1, and its geometry (the answer maps boxes through it)."""
    feeds, geometry = image_feeds(data, manifest)
    return Prepared(feeds, 1, geometry)
