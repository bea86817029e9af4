"""Cross-layer equalization with data-aware scales (converter/onnx/equalize.py) on a small depthwise-separable
block whose channels span very different ranges: float-exact (ReLU6 kept), and int8 closer to float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.data import Dataset
from converter.onnx.equalize import channel_maxima, equalize, find_pairs
from converter.onnx.model_io import ort_session
from converter.onnx.qdq_quantizer import OrtStaticQuantizer

from .test_compensation import _int8_kernels, _run


def _block(path: Path) -> Path:
    """Conv 3->16 -> ReLU6 -> depthwise 3x3 -> ReLU6 -> Conv 16->8: a MobileNet inverted residual without
    the residual. Half of the first conv's channels are 100x weaker than the rest, as in real expand convs."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (16, 3, 1, 1)) * np.where(np.arange(16) % 2, 1.0, 0.01)[:, None, None, None]
    b1 = np.where(np.arange(16) % 2, 0.5, 0.005)
    # the depthwise conv amplifies the weak channels back (BN folding leaves such pairs): they matter downstream
    w2 = rng.normal(0, 0.5, (16, 1, 3, 3)) * np.where(np.arange(16) % 2, 1.0, 100.0)[:, None, None, None]
    b2 = rng.normal(0, 0.01, 16)
    w3, b3 = rng.normal(0, 0.3, (8, 16, 1, 1)), np.zeros(8)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
             dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3, lo=np.array(0.0), hi=np.array(6.0)).items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6_2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_equalization_is_float_exact_and_brings_int8_closer(tmp_path):
    src = _block(tmp_path / "block.onnx")
    rng = np.random.default_rng(1)
    calib = Dataset({"x": rng.normal(0, 1, (48, 3, 12, 12)).astype(np.float32)})
    held_out = rng.normal(0, 1, (48, 3, 12, 12)).astype(np.float32)
    model = onnx.load(str(src))
    pairs = find_pairs(model)
    assert [(p.a.name, p.b.name) for p in pairs] == [("expand", "dw"), ("dw", "project")]
    model, report = equalize(model, channel_maxima(src, pairs, calib, tmp_path))
    assert report.pairs == 2 and report.channels_scaled >= 8
    assert report.range_spread_after < report.range_spread_before
    eq = tmp_path / "equalized.onnx"
    onnx.save(model, str(eq))
    assert [n.op_type for n in model.graph.node].count("Clip") == 2  # ReLU6 stays ReLU6
    ref = _run(src, held_out)
    assert np.abs(_run(eq, held_out) - ref).max() < 1e-4 * np.abs(ref).max()  # the float function is unchanged

    def int8(path: Path, name: str) -> Path:
        (tmp_path / name).mkdir()
        return OrtStaticQuantizer(path, tmp_path / name, calib, 48).quantize("minmax", dst=tmp_path / f"{name}.onnx")

    plain, equalized = int8(src, "plain"), int8(eq, "eq")
    err = lambda m: float(np.mean((_run(m, held_out) - ref) ** 2) / np.var(ref))  # noqa: E731
    assert err(equalized) < 0.2 * err(plain)
    # still a plain QDQ model ORT fuses: the same int8 kernels, no float Conv
    assert _int8_kernels(equalized, tmp_path) == _int8_kernels(plain, tmp_path)
    assert _int8_kernels(equalized, tmp_path).get("QLinearConv") == 3
    assert ort_session(equalized) is not None
