"""`edge-convert --format tflite` on a real pretrained ImageNet CNN told its preprocessing (issue 15's TFLite rows).

EfficientNet-Lite0 with real photos (examples/imagenet_cnns.py: calibration and selection views from one side of the
photo split): the fold reaches the .tflite (grey levels quantized with scale 1, zero point -128, the stem re-centred)
and `--compensation auto` fits GPTQ on TFLite and keeps it because it wins the paired test on the eval photos
(measured: 0.830 -> 0.934 of float's answers on the 106 selection views; until this round auto never fitted it there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx2tf")
pytest.importorskip("efficientnet_lite_pytorch")

from examples import imagenet_cnns as nets  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_tflite_conversion_folds_the_input_and_auto_keeps_gptq_on_lite0(tmp_path):
    from converter.cli import main
    from edge_agent.bundle import generate_keypair

    name = "efficientnet_lite0"
    src = nets.export(name, tmp_path / "lite0.onnx")
    calib_side, _ = nets.photo_split(400, 1, model=name)
    np.savez(tmp_path / "calib.npz", x=calib_side[0::2])
    np.savez(tmp_path / "select.npz", x=calib_side[1::2])
    key, _ = generate_keypair(tmp_path / "keys")
    out = tmp_path / "lite0.edgebundle"
    mean, std = nets.NORMALIZATION[name]
    assert main(["-q", "convert", str(src), "--profile", "raspberry-pi-4", "--format", "tflite", "--calibration",
                 str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "select.npz"), "--key", str(key), "--out", str(out),
                 "--bench-runs", "0", "--force", "--sensitivity", "off", "--mean", ",".join(map(str, mean)),
                 "--std", ",".join(map(str, std))]) == 0
    report = json.loads(Path(str(out) + ".report.json").read_text())
    passes = {p["pass"]: p for p in report["passes"]}
    assert passes["fold-input"]["folded"]
    convert = passes["tflite-convert"]
    assert all(q["scale"] == 1.0 and q["zero_point"] == -128 for q in convert["pixel_input_quantization"]), convert
    assert convert["stem_recentred"]["stem_bias_shift"] > 0.1  # plain int8: the stem's rounding times the mean pixel
    comp = convert["compensation"]
    assert comp["chosen"] == "gptq" and comp["paired_test"]["better"], comp
    none, gptq = (c["agreement"] for c in comp["candidates"])
    assert gptq > none + 0.05, comp
    assert comp["stem_recentred"]["stem_bias_shift"] < 1e-3  # GPTQ's weights sit on the grid: nothing left to shift
