"""One evaluator for every runtime: scores candidate models against the float model on fixed data.

The float model's outputs are computed once; each candidate is run over the same samples and scored
with converter.accuracy.metrics.score. Running a model is the caller's callback, so this stays
runtime-neutral (the passes pass one that runs ONNX or TFLite files alike).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import Dataset
from .metrics import score

RunFirstOutput = Callable[[Path, Dataset], Any]  # (model file, data) -> first output (or all outputs) over all samples
Scorer = Callable[[Any, Any, Any], dict[str, Any]]  # (reference, candidate, labels) -> score dict


class Evaluator:
    """`evaluate(model) -> score dict` against the float model's outputs on `data`.

    scorer: how two models' outputs are compared; default converter.accuracy.metrics.score for `task`
    (detectors use converter.accuracy.detection.DetectionScorer, with `run` giving every output).
    `scorer_for(data)` makes the scorer for a subset (ground truth follows the samples).
    """

    def __init__(self, run: RunFirstOutput, float_model: Path, data: Dataset, task: str, specs: Any = None,
                 scorer_for: Callable[[Dataset], Scorer] | None = None) -> None:
        self.run, self.float_model, self.data, self.task, self.specs = run, float_model, data, task, specs
        self.scorer_for = scorer_for
        self.scorer: Scorer = scorer_for(data) if scorer_for else (lambda r, c, y: score(r, c, task, y))
        self.reference = run(float_model, data)
        self._scores: dict[str, dict[str, Any]] = {}  # model file digest -> its score (see __call__)

    def __call__(self, model: Path) -> dict[str, Any]:
        """The score of `model`; a file with the same bytes as one already scored is not run again (a conversion
        scores its int8 model in the op-set choice, the compensation choice, the mixed-precision search and the
        gate: 20 s each on a detector with exact int8 arithmetic). A copy: callers edit the dict they get."""
        key = _digest(Path(model)) if isinstance(model, (str, Path)) else None
        if key is None or key not in self._scores:
            result = self.scorer(self.reference, self.run(model, self.data), self.data.labels)
            if key is None:
                return result
            self._scores[key] = result
        return copy.deepcopy(self._scores[key])

    def on(self, data: Dataset) -> "Evaluator":
        """The same evaluator on other samples (a search or held-out half, a sensitivity subset)."""
        return Evaluator(self.run, self.float_model, data, self.task, self.specs, self.scorer_for)


def _digest(model: Path) -> str | None:
    """SHA-256 of a self-contained model file (an ONNX file whose weights live in other files has none: those
    could change under the same bytes)."""
    if not model.is_file():
        return None
    if model.suffix.lower() == ".onnx":
        import onnx
        from onnx.external_data_helper import uses_external_data

        if any(uses_external_data(t) for t in onnx.load(str(model), load_external_data=False).graph.initializer):
            return None
    h = hashlib.sha256()
    with model.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
