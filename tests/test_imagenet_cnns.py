"""The real ImageNet CNNs the int8 benchmark measures are right in float before any quantization.

Each model is exported to ONNX exactly as scripts/bench_quant_real.py does and fed scikit-image's well-known
photos with its own normalisation; their top-1 must be the class a person would expect, and the model must be
surer of them than when fed the other model's normalisation. This failed before the
EfficientNet-Lite0 export stopped calling efficientnet-lite-pytorch's set_swish() (which swaps ReLU6 for Swish:
the baboon came out as a macaw) and before Lite0 got its (pixel - 127) / 128 input.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")

from examples import imagenet_cnns as nets  # noqa: E402


def ort_run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])

# ImageNet class indices a person accepts for each photo
EXPECTED = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {657, 744, 812, 682},  # missile, projectile, space shuttle, obelisk (the launch tower)
    "stereo_motorcycle": {665, 670},  # moped, motor scooter
}


def _photos() -> np.ndarray:
    views = []
    for name in EXPECTED:
        img = getattr(skimage_data, name)()
        views.append(nets.center_view(np.asarray(img[0] if isinstance(img, tuple) else img)))
    return np.stack(views)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(nets.MODELS))
def test_float_model_names_well_known_photos(model: str, tmp_path) -> None:
    path = nets.export(model, tmp_path / f"{model}.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops, "BN must be folded into the convs at export"
    if model == "efficientnet_lite0":
        assert "Sigmoid" not in ops, "Lite models use ReLU6, not Swish"
    photos = list(_photos())
    logits = ort_run(path, nets.normalize(photos, model))
    top1 = logits.argmax(1)
    wrong = {name: int(t) for name, t in zip(EXPECTED, top1) if int(t) not in EXPECTED[name]}
    assert not wrong, f"{model}: float top-1 not the expected class on {wrong}"
    # Fed the normalisation it was trained with, a model is surer of these photos than fed the other model's
    other = next(m for m in nets.NORMALIZATION if m != model)
    assert _confidence(logits) > _confidence(ort_run(path, nets.normalize(photos, other)))


def _confidence(logits: np.ndarray) -> float:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return float((e.max(1) / e.sum(1)).mean())
