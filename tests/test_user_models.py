"""Models and inputs a new user brings that the digits CNN does not exercise: integer (token id) inputs,
spatial and sequence outputs, image files as phones and scanners write them.

Every model is a tiny ONNX graph built with onnx.helper (converted in about a second); every run goes through
the real CLIs (edge-convert, edge-agent) and the answers are checked against onnxruntime on the float model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.cli import main as convert_main
from edge_agent.bundle import generate_keypair
from edge_agent.cli import main as agent_main

VOCAB, STEPS, DIM, CLASSES = 20, 12, 16, 5


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def token_classifier(path: Path) -> Path:
    """int64 token ids [1, STEPS] -> embedding (Gather) -> mean over time -> class logits [1, CLASSES]."""
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.normal(size=(VOCAB, DIM)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.normal(size=(DIM, CLASSES)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, STEPS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
                              [emb, w])
    return _save(graph, path)


def _convert(model: Path, out: Path, key: Path, *extra: str) -> int:
    return convert_main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(key),
                         "--out", str(out), "--bench-runs", "0", *extra])


def test_a_model_with_int64_token_inputs_converts_to_int8_and_answers_as_float(keys, tmp_path, capsys):
    """A token-id model (int64 input) with an int64 .npz died in calibration with ONNX Runtime's
    'Unexpected input data type. Actual: (tensor(float))' (exit 1): the data loader cast every array to float32."""
    model = token_classifier(tmp_path / "tokens.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", ids=rng.integers(0, VOCAB, (48, STEPS)))
    np.savez(tmp_path / "eval.npz", ids=rng.integers(0, VOCAB, (48, STEPS)))
    out = tmp_path / "tokens.edgebundle"
    assert _convert(model, out, keys[0], "--calibration", str(tmp_path / "cal.npz"),
                    "--eval", str(tmp_path / "eval.npz")) == 0
    one = rng.integers(0, VOCAB, (1, STEPS)).astype(np.int64)
    np.save(tmp_path / "one.npy", one)
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "one.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = ort.InferenceSession(str(model)).run(None, {"ids": one})[0]
    assert got["label"] == int(want.argmax())
