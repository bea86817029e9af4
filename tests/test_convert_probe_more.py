"""`edge-convert convert` probed further (after tests/test_convert_probe*.py): data naming, eval size, reports.

Each test runs the real CLI on a tiny ONNX graph built here and checks what a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .test_convert_probe import convert, key  # noqa: F401 - key is a fixture


def labels_input_model(path: Path, vocab: int = 10, classes: int = 3) -> Path:
    """A token model whose (only) input is named `labels`, as some label-conditioned token models' are."""
    table = numpy_helper.from_array(np.random.default_rng(3).standard_normal((vocab, classes)).astype(np.float32), "t")
    nodes = [helper.make_node("Gather", ["t", "labels"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["scores"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "labelled", [helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 5])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_input_named_labels_is_fed_not_taken_as_class_labels(key, tmp_path, capsys, caplog):
    """A model input named `labels` was popped as the class labels: 'has no array named labels' and no conversion.
    The rule: an array `labels` feeds an input of that name, and a warning says the gate has no class labels."""
    ids = np.random.default_rng(4).integers(0, 10, (16, 5)).astype(np.int64)
    np.savez(tmp_path / "eval.npz", labels=ids)
    rc = convert(labels_input_model(tmp_path / "m.onnx"), key, tmp_path / "m.edgebundle", "--precision", "fp32",
                 "--eval", str(tmp_path / "eval.npz"), "--json")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "feeds model input 'labels'" in caplog.text
    accuracy = json.loads(out)["measurements"]["accuracy"]
    assert accuracy["samples"] == 16 and "top1_drop_points" not in accuracy
