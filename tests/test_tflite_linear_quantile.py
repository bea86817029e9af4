"""TFLite `--calibration-method linearquantile` (converter/tflite/linear_quantile.py) on real MobileNetV2 and photos:
the written int8 .tflite's linear bottlenecks and residual ADDs get narrower scales than TensorFlow's minmax (mean
per-input 0.1/99.9 % quantiles), its ReLU6 outputs keep exactly TF's scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx2tf")
pytest.importorskip("torch")
pytest.importorskip("skimage.data")

from examples import imagenet_cnns as nets  # noqa: E402

RELU6 = 3  # tflite ActivationFunctionType


def _scales(path: Path) -> dict[str, float]:
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(path, threads=1, use_xnnpack=False)
    return {d["name"]: float(d["quantization"][0]) for d in it.get_tensor_details() if d["quantization"][0]}


def _relu6_outputs(path: Path) -> list[str]:
    """Output tensor names of the convs with a fused RELU6 in a .tflite file."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    return [graph.tensors[int(op.outputs[0])].name.decode() for op in graph.operators
            if getattr(op.builtinOptions, "fusedActivationFunction", 0) == RELU6]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_linearquantile_narrows_unbounded_tensors_and_keeps_relu6_ranges(tmp_path):
    from converter.data import Dataset
    from converter.tflite.onnx2tf import onnx_to_tflite
    from edge_agent.bundle import TensorSpec

    src = nets.export("mobilenet_v2", tmp_path / "mobilenet_v2.onnx")
    calib, _ = nets.photo_split(24, 1)
    spec = [TensorSpec("x", "float32", [1, 3, 224, 224], "NCHW")]
    results = {q: onnx_to_tflite(src, tmp_path / f"q{q}", "int8-static", spec, Dataset({"x": calib}), len(calib),
                                 quantile=q) for q in (None, 99.9)}
    set_names = results[99.9].pixel_grid["linearquantile"]
    assert len(set_names) > 20 and "linearquantile" not in results[None].pixel_grid  # 17 bottlenecks, 10 ADDs...
    plain, ours = _scales(results[None].model), _scales(results[99.9].model)
    narrower = [n for n in set_names if n in ours and ours[n] < 0.95 * plain[n]]
    assert len(narrower) >= 0.8 * len(set_names), (len(narrower), len(set_names))
    relu6 = [n for n in _relu6_outputs(results[99.9].model) if n in plain]
    assert len(relu6) > 20 and not set(relu6) & set(set_names)
    assert all(ours[n] == plain[n] for n in relu6), [(n, plain[n], ours[n]) for n in relu6 if ours[n] != plain[n]]
