"""Stage-by-stage layer inputs (converter/onnx/staged_run.py): the values a whole-model run gives at the same moment,
each node run once per sample, on a small graph with a residual branch whose weights change between stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.onnx.activation_error import _expose
from converter.onnx.model_io import ort_session
from converter.onnx.reconstruct import initializers_as_inputs
from converter.onnx.staged_run import plan


def _residual_net() -> onnx.ModelProto:
    """x -> conv a -> relu -> conv b -> add(relu) -> conv c, and conv d reads conv a's relu too (a kept tensor)."""
    rng = np.random.default_rng(0)
    w = {k: numpy_helper.from_array(rng.normal(size=(4, 4 if k != "a" else 3, 3, 3)).astype(np.float32), f"w{k}")
         for k in "abcd"}
    b = {k: numpy_helper.from_array(rng.normal(size=4).astype(np.float32), f"b{k}") for k in "abcd"}
    conv = lambda k, x, y: helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [y], name=f"conv_{k}", pads=[1, 1, 1, 1])  # noqa: E731
    nodes = [conv("a", "x", "ya"), helper.make_node("Relu", ["ya"], ["ra"], name="relu_a"), conv("b", "ra", "yb"),
             helper.make_node("Add", ["yb", "ra"], ["s"], name="add"), conv("c", "s", "yc"), conv("d", "ra", "yd"),
             helper.make_node("Add", ["yc", "yd"], ["out"], name="sum")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [*w.values(), *b.values()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_each_node_runs_once_and_kept_tensors_are_freed_after_their_last_reader():
    model = _residual_net()
    stages = plan(model, ["x", "ra", "s", "ra"])  # conv a, b, c, d's inputs; d reads what b read
    assert [[n.name for n in s.nodes] for s in stages] == [[], ["conv_a", "relu_a"], ["conv_b", "add"], []]
    assert stages[1].keeps == ["ra"] and stages[2].reads == ["ra"] and stages[2].frees == ["s"]
    assert stages[3].reads == ["ra"] and stages[3].frees == ["ra"]


def test_staged_values_equal_whole_model_runs_while_weights_change(tmp_path: Path):
    """Layer k's input after layers 0..k-1 got new weights: bit for bit what the whole model computes then (fails
    if a stage re-used a value computed before an upstream weight changed, or ran on stale feeds)."""
    model = _residual_net()
    targets = [n.input[0] for n in model.graph.node if n.op_type == "Conv"]
    names = {i.name for i in model.graph.initializer}
    runner, feeds = initializers_as_inputs(model, names, targets, tmp_path, "t")
    whole = ort_session(_expose_model(_weights_as_inputs(model), targets[1:], tmp_path / "whole.onnx"))  # [0]: input
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    for k, layer in enumerate("abcd"):
        for i, x in enumerate(xs):
            got = runner.run(k, i, {"x": x, **feeds})
            want = whole.run([targets[k]], {"x": x, **feeds})[0] if k else x
            assert got.dtype == want.dtype and np.array_equal(got, want), (layer, i)
        feeds[f"w{layer}"] = feeds[f"w{layer}"] * 0.5 + 0.1  # "fitted": later stages must see it
        feeds[f"b{layer}"] = feeds[f"b{layer}"] - 1.0
    assert not runner._kept  # every sample's kept tensors freed after the last stage


def _weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The source model as a whole-model session would run it with its weights fed (not ORT's optimized graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input.extend(helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in m.graph.initializer)
    del m.graph.initializer[:]
    return m


def _expose_model(model: onnx.ModelProto, tensors: list[str], path: Path) -> Path:
    onnx.save_model(model, str(path))
    return _expose(path, tensors, path)
