"""linearquantile calibration: per-input quantiles only on the activations no ReLU/Clip bounds.

On torchvision's MobileNetV2 and real photos, the linear bottleneck convs' outputs and the residual Adds get the
mean per-input quantile ranges (narrower than minmax: their outliers no longer stretch the scale), every ReLU6
output keeps its minmax range, and the logits are never clipped.
"""

from __future__ import annotations

import json

import onnx
import pytest

pytest.importorskip("skimage.data")

from converter.data import Dataset  # noqa: E402
from converter.onnx.qdq_quantizer import OrtStaticQuantizer, unbounded_tensors  # noqa: E402
from examples import imagenet_cnns as nets  # noqa: E402

from .test_fold_input import _export, _views  # noqa: E402


@pytest.mark.slow
def test_linearquantile_narrows_only_unbounded_activations(tmp_path):
    src = _export("mobilenet_v2", tmp_path)
    x = nets.normalize(_views(), "mobilenet_v2")
    q = OrtStaticQuantizer(src, tmp_path, Dataset({"x": x}), len(x))
    q.quantize("linearquantile:99.9", dst=tmp_path / "lq.onnx")
    minmax = json.loads((tmp_path / "calib.minmax.json").read_text())["data"]
    linear = json.loads((tmp_path / "calib.linearquantile_99.9.json").read_text())["data"]
    model = onnx.load(str(src))
    producer = {n.output[0]: n.op_type for n in model.graph.node}
    unbounded = set(unbounded_tensors(src))
    assert {producer[t] for t in unbounded} == {"Conv", "Add"} and len(unbounded) >= 17 + 10  # 17 bottlenecks, 10 Adds
    assert "logits" not in unbounded

    def width(r: dict, t: str) -> float:
        return r[t]["highest"]["data"][0] - r[t]["lowest"]["data"][0]

    narrowed = [t for t in unbounded if width(linear, t) < width(minmax, t)]
    assert len(narrowed) == len(unbounded)
    bounded = [t for t, op in producer.items() if op == "Clip" and t in minmax]
    assert bounded and all(linear[t] == minmax[t] for t in bounded)
    assert linear["logits"] == minmax["logits"]
