"""One evaluator for every runtime: scores candidate models against the float model on fixed data.

The float model's outputs are computed once; each candidate is run over the same samples and scored
with converter.accuracy.metrics.score. Running a model is the caller's callback, so this stays
runtime-neutral (the passes pass one that runs ONNX or TFLite files alike).
"""

from __future__ import annotations

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

    def __call__(self, model: Path) -> dict[str, Any]:
        return self.scorer(self.reference, self.run(model, self.data), self.data.labels)

    def on(self, data: Dataset) -> "Evaluator":
        """The same evaluator on other samples (a search or held-out half, a sensitivity subset)."""
        return Evaluator(self.run, self.float_model, data, self.task, self.specs, self.scorer_for)
