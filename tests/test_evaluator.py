"""The evaluator's memo (converter/accuracy/evaluator.py): a model file with the bytes of one already scored gets
that score without running again; other bytes at the same path run again; callers cannot edit the memo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.accuracy.evaluator import Evaluator
from converter.data import Dataset
from converter.runners import run_model


def _scale_model(path: Path, k: float) -> Path:
    """y = x * k (two classes): k = 1 is the float model, k = -1 flips every answer."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.array(k, np.float32), "k")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_same_bytes_are_scored_once_and_other_bytes_again(tmp_path: Path):
    runs: list[Path] = []

    def run(model: Path, data: Dataset) -> np.ndarray:
        runs.append(Path(model))
        return run_model(model, data)[0]

    data = Dataset({"x": np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)})
    ev = Evaluator(run, _scale_model(tmp_path / "float.onnx", 1.0), data, "classification")
    flipped = _scale_model(tmp_path / "a.onnx", -1.0)
    first = ev(flipped)
    first["agreement"] = 7.0  # a caller editing its copy (the gate pops keys) leaves the memo alone
    again = ev(shutil.copy(flipped, tmp_path / "b.onnx"))  # same bytes, another path: not run
    assert runs == [tmp_path / "float.onnx", flipped] and again["agreement"] == 0.0
    _scale_model(flipped, 1.0)  # new bytes under the old name: run and scored afresh
    assert ev(flipped)["agreement"] == 1.0 and runs[-1] == flipped and len(runs) == 3
