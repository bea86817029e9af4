"""The camera path's one-pass preprocessing (swap after resize, scale/mean/std/layout written once) gives the
same tensor, bit for bit, as the plain formula `(pixel * scale - mean) / std` after a colour conversion of the
whole frame: bundles calibrated before keep their self-test outputs, host and device stay identical."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.pipeline import preprocess as P


def reference(image, spec, tensor, color_order):
    image = P.convert_color(image, color_order, spec.color)
    resized, box = P._resize(np.ascontiguousarray(image), (spec.size[0], spec.size[1]), spec.resize, spec.resampler)
    x = (resized.astype(np.float32) * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return P.to_layout(x[None], "NHWC", tensor.layout if tensor.layout in ("NCHW", "NHWC") else "NCHW"), box


@pytest.mark.parametrize("without_opencv", [False, True])
@pytest.mark.parametrize("hw", [(97, 131), (40, 200)])  # letterbox bars left/right, then top/bottom
@pytest.mark.parametrize("channels", [3, 1, 4])
def test_one_pass_preprocessing_is_bit_identical_to_the_formula(channels, hw, without_opencv, monkeypatch):
    if without_opencv:  # the channel swap and NCHW planes fall back to numpy
        monkeypatch.setattr(P, "_cv2_or_none", lambda: None)
    image = np.random.default_rng(channels).integers(0, 256, (*hw, channels), dtype=np.uint8)
    norms = [([0.0], [1.0]), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), ([0.5], [0.5])]
    for color, order, layout, resampler, resize, (mean, std) in itertools.product(
            ("RGB", "BGR", "GRAY"), ("RGB", "BGR"), ("NCHW", "NHWC", "ANY"), ("pillow", "opencv"),
            ("letterbox", "bilinear", "nearest"), norms):
        spec = Preprocess(color=color, size=[32, 48], resize=resize, resampler=resampler, mean=mean, std=std)
        tensor = TensorSpec("x", "float32", [1, 3, 32, 48], layout)
        want, want_box = reference(image, spec, tensor, order)
        got, box = P.preprocess_image(image, spec, tensor, order)
        assert got.shape == want.shape and np.array_equal(got, want) and box == want_box, (color, order, layout, resampler, resize, mean)
