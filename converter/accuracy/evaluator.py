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

RunFirstOutput = Callable[[Path, Dataset], np.ndarray]  # (model file, data) -> first output over all samples


class Evaluator:
    """`evaluate(model) -> score dict` against the float model's outputs on `data`."""

    def __init__(self, run: RunFirstOutput, float_model: Path, data: Dataset, task: str, specs: Any = None) -> None:
        self.run, self.float_model, self.data, self.task, self.specs = run, float_model, data, task, specs
        self.reference = run(float_model, data)

    def __call__(self, model: Path) -> dict[str, Any]:
        return score(self.reference, self.run(model, self.data), self.task, self.data.labels)

    def on(self, data: Dataset) -> "Evaluator":
        """The same evaluator on other samples (a search or held-out half, a sensitivity subset)."""
        return Evaluator(self.run, self.float_model, data, self.task, self.specs)
