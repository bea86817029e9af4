"""TFLite `--calibration-method` (converter/tflite/calibration.py): what TFLite cannot calibrate is a usage error
(exit 2, no silent minmax), and `auto` or a list is compared on the eval data as on the ONNX path, the best kept and
reported (issue 15: on EfficientNet-Lite0 the method the bench forced lost to minmax)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import convert_args


def test_tflite_methods_take_minmax_linearquantile_and_refuse_the_rest():
    from converter.errors import UsageError
    from converter.tflite.calibration import AUTO_CANDIDATES, quantile_of, tflite_methods

    assert tflite_methods(None) == ["minmax"] and tflite_methods(None, "entropy") == ["minmax"]
    assert tflite_methods("linearquantile:99.99") == ["linearquantile:99.99"]
    assert tflite_methods("auto") == list(AUTO_CANDIDATES) == ["minmax", "linearquantile:99.9"]
    assert tflite_methods("minmax, linearquantile,minmax") == ["minmax", "linearquantile"]
    assert [quantile_of(m) for m in ("minmax", "linearquantile", "linearquantile:99.99")] == [None, 99.9, 99.99]
    for spec in ("entropy", "percentile:99.9", "minmax,meanquantile", "distribution", "nonsense"):
        with pytest.raises(UsageError):
            tflite_methods(spec)


@pytest.mark.timeout(600)
def test_tflite_refuses_a_method_it_cannot_calibrate_with_exit_2(digits, tmp_path, capsys):
    from converter.cli import main

    out = tmp_path / "entropy.edgebundle"
    assert main(convert_args(digits, out, "raspberry-pi-4", "--format", "tflite", "--calibration-method", "entropy")) == 2
    assert "TFLite int8 takes minmax, linearquantile" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.timeout(900)
def test_tflite_compares_calibration_methods_on_the_eval_data(digits, tmp_path):
    from converter.cli import main
    from edge_agent.bundle import read_manifest_unverified

    out = tmp_path / "auto.edgebundle"
    assert main(convert_args(digits, out, "raspberry-pi-4", "--format", "tflite", "--precision", "int8-static",
                             "--calibration-method", "auto", "--compensation", "none", "--sensitivity", "off")) == 0
    convert = next(p for p in json.loads(Path(str(out) + ".report.json").read_text())["passes"]
                   if p["pass"] == "tflite-convert")
    search = convert["calibration_search"]
    rows = {r["method"]: r for r in search["candidates"]}
    assert set(rows) == {"minmax", "linearquantile:99.9"} and all("agreement" in r for r in rows.values()), search
    best = max(rows.values(), key=lambda r: (r["agreement"], -r["error"]))
    assert search["chosen"] == best["method"]
    assert convert["calibration_method"] == ("minmax (measured)" if best["method"] == "minmax" else best["method"])
    assert "vs_minmax" in rows["linearquantile:99.9"]  # the paired test against the first candidate is reported
    m = read_manifest_unverified(out)
    assert m.format == "tflite" and m.precision == "int8-static"


def _residual_model():
    """conv c1 -> conv c2 (small weights) -> c2 + c1 -> conv: c2's own range is ~13x narrower than the sum's."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 4), batch_size=1)
    c1 = tf.keras.layers.Conv2D(4, 1, name="c1")(inp)
    c2 = tf.keras.layers.Conv2D(4, 1, name="c2",
                                kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.05, seed=1))(c1)
    return tf.keras.Model(inp, tf.keras.layers.Conv2D(2, 1, name="head")(tf.keras.layers.Add()([c2, c1])))


def _int8_scales(measured: bool) -> dict[str, float]:
    """{tensor name: scale} of the residual model quantized by TFLiteConverter under pixel_grid(measured=...)."""
    import numpy as np
    import tensorflow as tf

    from converter.tflite.pixel_grid import pixel_grid

    rng = np.random.default_rng(0)
    data = [rng.normal(size=(1, 8, 8, 4)).astype(np.float32) * 3 for _ in range(8)]
    conv = tf.lite.TFLiteConverter.from_keras_model(_residual_model())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([d] for d in data)
    with pixel_grid(False, measured=measured):
        content = conv.convert()
    it = tf.lite.Interpreter(model_content=content)
    return {d["name"]: float(d["quantization"][0]) for d in it.get_tensor_details() if d["quantization"][0]}


def test_calibration_ranges_are_measured_not_taken_from_tf_in_place_records():
    """TF's calibrator logs an ADD's input after the ADD wrote its sum into that buffer: c2 gets the sum's range
    (its int8 steps ~13x too coarse). Measured again with every tensor kept, c2 gets its own range."""
    def pick(scales: dict[str, float]) -> tuple[float, float]:  # (c2's scale, the sum's); names carry Keras counters
        c2 = [v for n, v in scales.items() if "/c2" in n and "add" not in n.lower()]
        add = [v for n, v in scales.items() if "/add" in n.lower() and "/c2" not in n]
        assert len(c2) == 1 and len(add) == 1, scales
        return c2[0], add[0]

    (tf_c2, tf_add), (c2, add) = pick(_int8_scales(False)), pick(_int8_scales(True))
    assert tf_c2 == pytest.approx(tf_add)  # the defect: the conv's scale is the sum's
    assert c2 < tf_c2 / 5  # its own range now
    assert add == pytest.approx(tf_add, rel=1e-3)  # the sum's own range was right and stays
