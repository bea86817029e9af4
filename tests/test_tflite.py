"""TFLite bundles end to end: onnx2tf and TFLiteConverter conversions, LiteRT in the agent.

Real conversions (onnx2tf 1.28.8, tf.lite.TFLiteConverter), real signed bundles, the real
`edge-agent run`/`bench` CLI on ai-edge-litert. Converted bundles are shared per module.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from converter.onnx.int8_arithmetic import host_saturates

from .conftest import REPO, convert_args

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TFLITE_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")


def convert(argv: list[str]) -> int:
    from converter.cli import main

    return main(["--quiet", *argv])


def agent_json(capsys, home: Path, *argv: str):
    """Run `edge-agent ... --json` in-process; returns (exit code, parsed stdout)."""
    from edge_agent.cli import main

    capsys.readouterr()
    code = main(["--home", str(home), *argv, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def manifest(bundle: Path):
    from edge_agent.bundle import read_manifest_unverified

    return read_manifest_unverified(bundle)


@pytest.fixture(scope="module")
def tfl(digits, tmp_path_factory) -> dict[str, Path]:
    """The digits CNN as TFLite bundles: the four precisions plus int8-static with int8 I/O."""
    folder = tmp_path_factory.mktemp("tflite-bundles")
    out = {}
    for precision in TFLITE_PRECISIONS:
        path = folder / f"digits-{precision}.edgebundle"
        assert convert(convert_args(digits, path, "raspberry-pi-4", "--format", "tflite", "--precision", precision)) == 0
        out[precision] = path
    path = folder / "digits-int8-io.edgebundle"
    assert convert(convert_args(digits, path, "raspberry-pi-4", "--format", "tflite", "--precision", "int8-static",
                                "--io-dtype", "int8")) == 0
    out["int8-io"] = path
    return out


@pytest.fixture(scope="module")
def heldout_npys(digits, tmp_path_factory) -> list[Path]:
    """Every held-out digit as an NCHW (source layout) .npy file, as a user would give it."""
    folder = tmp_path_factory.mktemp("heldout")
    paths = []
    for i, x in enumerate(digits.x_test):
        p = folder / f"{i:03d}.npy"
        np.save(p, x)  # (1, 8, 8): the ONNX model's layout without batch
        paths.append(p)
    return paths


def agent_labels(capsys, home: Path, pub: Path, bundle: Path, inputs: list[Path]) -> np.ndarray:
    code, result = agent_json(capsys, home, "run", str(bundle), *map(str, inputs), "--trust", str(pub), "--threads", "2")
    assert code == 0
    result = result if isinstance(result, list) else [result]
    return np.array([r["label"] for r in result])


@pytest.mark.parametrize("precision", TFLITE_PRECISIONS)
def test_each_precision_runs_and_benches_in_agent(tfl, digits, heldout_npys, capsys, tmp_path, precision):
    bundle = tfl[precision]
    m = manifest(bundle)
    assert (m.format, m.runtime, m.precision) == ("tflite", "litert", precision)
    assert m.model_file.endswith(".tflite")
    spec = m.inputs[0]
    assert spec.layout == "NHWC" and spec.source_layout == "NCHW" and spec.shape == [1, 8, 8, 1]
    assert spec.dtype == "float32" and spec.quantization is None  # float I/O by default
    assert m.measurements["accuracy"]["passed"] is True

    labels = agent_labels(capsys, tmp_path, digits.pub, bundle, heldout_npys[:20])
    assert (labels == digits.y_test[:20]).mean() >= 0.9

    code, report = agent_json(capsys, tmp_path, "bench", str(bundle), "--trust", str(digits.pub), "--runs", "20",
                              "--warmup", "2", "--threads", "2")
    assert code == 0
    assert report["runtime"] == "litert" and report["threads"] == 2
    assert report["details"]["interpreter"] == "ai-edge-litert"
    assert report["provider"] == "XNNPACK" and report["details"]["delegate_nodes"] > 0
    assert report["latency"]["p50_ms"] > 0 and report["runs"] == 20


def test_full_int8_accuracy_and_onnx_agreement(tfl, digits, int8_bundle, heldout_npys, capsys, tmp_path):
    tflite_labels = agent_labels(capsys, tmp_path, digits.pub, tfl["int8-static"], heldout_npys)
    onnx_labels = agent_labels(capsys, tmp_path, digits.pub, int8_bundle, heldout_npys)
    float_acc = digits.float_accuracy
    tflite_acc = float((tflite_labels == digits.y_test).mean())
    assert float_acc - tflite_acc <= 0.015, (float_acc, tflite_acc)
    # the agent runs the ONNX bundle on this host's kernels: they saturate on x86 without VNNI (measured 0.969 on an
    # AVX2 EPYC; converter.onnx.int8_arithmetic), XNNPACK's do not
    assert (tflite_labels == onnx_labels).mean() >= (0.95 if host_saturates() else 0.98)
    fp32_labels = agent_labels(capsys, tmp_path, digits.pub, tfl["fp32"], heldout_npys)
    assert (fp32_labels == digits.float_predictions).mean() >= 0.99  # fp32 TFLite == torch float


def test_integer_io_records_quantization_and_dequantizes(tfl, digits, heldout_npys, capsys, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    bundle = tfl["int8-io"]
    m = manifest(bundle)
    assert m.precision == "int8-static"
    i, o = m.inputs[0], m.outputs[0]
    assert i.dtype == "int8" and o.dtype == "int8"
    assert i.quantization is not None and o.quantization is not None
    with tarfile.open(bundle) as tar:
        tar.extract(m.model_file, tmp_path, filter="data")
    it = Interpreter(model_path=str(tmp_path / m.model_file))
    scale, zp = it.get_input_details()[0]["quantization"]
    assert (i.quantization.scale, i.quantization.zero_point) == pytest.approx((scale, zp))
    assert abs(scale - 1 / 255) < 1e-4 and zp == -128  # the [0, 1] range of the calibration data
    labels = agent_labels(capsys, tmp_path, digits.pub, bundle, heldout_npys)
    assert digits.float_accuracy - float((labels == digits.y_test).mean()) <= 0.015
    code, result = agent_json(capsys, tmp_path, "run", str(bundle), str(heldout_npys[0]), "--trust", str(digits.pub))
    assert code == 0 and 0.0 <= result["score"] <= 1.0  # dequantized logits -> softmax


def test_png_and_npy_give_same_label_on_onnx_and_tflite(tfl, digits, int8_bundle, capsys, tmp_path):
    from PIL import Image

    for k in range(6):
        x = digits.x_test[k]  # (1, 8, 8) in [0, 1]
        png = tmp_path / f"digit{k}.png"
        Image.fromarray(np.rint(x[0] * 255).astype(np.uint8), mode="L").save(png)
        npy = tmp_path / f"digit{k}.npy"
        np.save(npy, np.rint(x * 255) / 255)
        answers = {}
        for name, bundle in (("onnx", int8_bundle), ("tflite", tfl["int8-static"]), ("tflite-fp32", tfl["fp32"])):
            for item in (png, npy):
                code, r = agent_json(capsys, tmp_path, "run", str(bundle), str(item), "--trust", str(digits.pub))
                assert code == 0
                answers[(name, item.suffix)] = r["label"]
        assert len(set(answers.values())) == 1, answers
        assert answers[("onnx", ".png")] == digits.float_predictions[k]


def _keras_digits(digits):
    """A small Keras CNN (NHWC) trained in the test on the digits training split."""
    import keras

    from examples import digits_cnn

    x_train, y_train, _, _ = digits_cnn.load_split()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train.transpose(0, 2, 3, 1), y_train, epochs=15, batch_size=64, verbose=0)
    return model


def test_keras_savedmodel_and_tflite_sources(digits, capsys, tmp_path):
    from edge_agent.bundle import read_manifest_unverified
    from examples import digits_cnn

    model = _keras_digits(digits)
    keras_file = tmp_path / "digits.keras"
    model.save(keras_file)
    _, _, x_test, y_test = digits_cnn.load_split()
    x_nhwc = x_test.transpose(0, 2, 3, 1)
    keras_acc = float((model.predict(x_nhwc, verbose=0).argmax(1) == y_test).mean())
    x_train = digits_cnn.load_split()[0]
    np.savez(tmp_path / "calib.npz", image=x_train[:200].transpose(0, 2, 3, 1))
    np.savez(tmp_path / "eval.npz", image=x_nhwc, labels=y_test)
    common = ["--profile", "raspberry-pi-4", "--calibration", str(tmp_path / "calib.npz"), "--eval",
              str(tmp_path / "eval.npz"), "--key", str(digits.key), "--bench-runs", "5", "--min-speedup", "0"]

    # Keras -> TFLite full int8 through TFLiteConverter (default format for Keras sources)
    bundle = tmp_path / "keras-int8.edgebundle"
    assert convert(["convert", str(keras_file), *common, "--out", str(bundle)]) == 0
    m = read_manifest_unverified(bundle)
    assert (m.format, m.precision, m.inputs[0].layout, m.inputs[0].source_layout) == ("tflite", "int8-static", "NHWC", None)
    assert "TFLiteConverter" in json.dumps(json.loads((tmp_path / "keras-int8.edgebundle.report.json").read_text())["passes"])
    npys = []
    for i in range(60):
        np.save(tmp_path / f"k{i}.npy", x_nhwc[i])
        npys.append(tmp_path / f"k{i}.npy")
    labels = agent_labels(capsys, tmp_path, digits.pub, bundle, npys)
    assert (labels == y_test[:60]).mean() >= keras_acc - 0.05
    code, report = agent_json(capsys, tmp_path, "bench", str(bundle), "--trust", str(digits.pub), "--runs", "10", "--threads", "2")
    assert code == 0 and report["runtime"] == "litert" and report["precision"] == "int8-static"

    # the same model as a SavedModel folder, int8 I/O
    saved = tmp_path / "saved"
    model.export(str(saved), verbose=False)
    bundle2 = tmp_path / "saved-int8.edgebundle"
    assert convert(["convert", str(saved), *common, "--io-dtype", "uint8", "--out", str(bundle2)]) == 0
    m2 = read_manifest_unverified(bundle2)
    assert m2.inputs[0].dtype == "uint8" and m2.inputs[0].quantization is not None
    labels2 = agent_labels(capsys, tmp_path, digits.pub, bundle2, npys)
    assert (labels2 == labels).mean() >= 0.95

    # an existing .tflite: re-packaged as it is (not re-quantized), precision read from the file
    with tarfile.open(bundle) as tar:
        tar.extract(m.model_file, tmp_path / "x", filter="data")
    existing = tmp_path / "existing.tflite"
    shutil.copyfile(tmp_path / "x" / m.model_file, existing)
    bundle3 = tmp_path / "existing.edgebundle"
    assert convert(["convert", str(existing), *common, "--out", str(bundle3)]) == 0
    m3 = read_manifest_unverified(bundle3)
    assert m3.precision == "int8-static"
    assert m3.file_entry(m3.model_file).sha256 == m.file_entry(m.model_file).sha256  # byte-identical model
    assert (agent_labels(capsys, tmp_path, digits.pub, bundle3, npys) == labels).all()

    # Keras sources cannot become ONNX bundles: one clear line, usage exit code, nothing written
    bad = tmp_path / "bad.edgebundle"
    assert convert(["convert", str(keras_file), *common, "--format", "onnx", "--out", str(bad)]) == 2
    assert "TFLite bundles only" in capsys.readouterr().err and not bad.exists()


def _three_channel_model(folder: Path) -> tuple[Path, Path]:
    """A small 3-channel CNN exported to ONNX, with calibration data (the user's only data)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    onnx_path = folder / "rgb.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(onnx_path), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"])
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", image=rng.random((32, 3, 32, 32), dtype=np.float32))
    return onnx_path, folder / "calib.npz"


def test_three_channel_conversion_with_network_blocked(digits, monkeypatch, tmp_path, capsys):
    onnx_path, calib = _three_channel_model(tmp_path)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "rgb.edgebundle"
    code = convert(["convert", str(onnx_path), "--profile", "raspberry-pi-4", "--format", "tflite", "--calibration",
                    str(calib), "--key", str(digits.key), "--out", str(bundle), "--bench-runs", "3", "--min-speedup", "0"])
    assert code == 0, capsys.readouterr().err
    assert attempts == []  # nothing even tried to connect
    m = manifest(bundle)
    assert m.precision == "int8-static" and m.inputs[0].shape == [1, 32, 32, 3] and m.inputs[0].source_layout == "NCHW"
    assert not list(tmp_path.glob("calibration_image_sample_data*"))  # onnx2tf's work stays in its private folder
    monkeypatch.undo()
    code, result = agent_json(capsys, tmp_path, "run", str(bundle), str(_npy(tmp_path)), "--trust", str(digits.pub))
    assert code == 0 and 0 <= result["label"] < 10


def _npy(folder: Path) -> Path:
    p = folder / "rgb_input.npy"
    np.save(p, np.random.default_rng(1).random((3, 32, 32), dtype=np.float32))
    return p


@pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0,
                    reason="unshare -rn (network namespace) not permitted here")
def test_three_channel_conversion_in_network_namespace(digits, tmp_path):
    """The whole CLI in a process with no network interfaces at all (`unshare -rn`)."""
    onnx_path, calib = _three_channel_model(tmp_path)
    bundle = tmp_path / "rgb-ns.edgebundle"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "converter.cli", "--quiet", "convert", str(onnx_path), "--profile",
         "raspberry-pi-4", "--format", "tflite", "--calibration", str(calib), "--key", str(digits.key), "--out",
         str(bundle), "--bench-runs", "3", "--min-speedup", "0", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # stdout holds only the JSON report (TF's prints go to stderr)
    assert report["format"] == "tflite" and report["precision"] == "int8-static"
    assert bundle.is_file()


def test_format_auto_records_candidates_and_packs_a_passing_one(digits, tmp_path):
    bundle = tmp_path / "auto.edgebundle"
    assert convert(convert_args(digits, bundle, "raspberry-pi-4", "--format", "auto")) == 0
    m = manifest(bundle)
    cands = {c["format"]: c for c in m.measurements["candidates"]}
    assert set(cands) == {"tflite", "onnx"}  # raspberry-pi-4 allows both
    sel = m.measurements["format_selection"]
    assert sel["chosen"] == m.format and cands[m.format]["passed"] is True
    passing = {f: c["host_latency"]["p50_ms"] for f, c in cands.items() if c["passed"]}
    assert cands[m.format]["host_latency"]["p50_ms"] <= min(passing.values()) * 1.03  # fastest, or tied with it
    # int8 either way: plain, or with a float layer where equalization/bias correction did not win the paired test
    assert all(c["precision"] in ("int8-static", "int8-mixed") for c in cands.values())
    assert m.runtime == ("litert" if m.format == "tflite" else "onnxruntime")


def test_onnx2tf_output_does_not_depend_on_earlier_conversions(digits, tmp_path):
    """onnx2tf names TF ops from tf_keras' per-process counters; the converter resets them, so converting the
    same ONNX model twice in one process gives byte-identical .tflite files (as --reproducible promises)."""
    import hashlib

    from converter.onnx.model_io import tensor_specs
    from converter.tflite.onnx2tf import onnx_to_tflite

    inputs, _ = tensor_specs(digits.onnx)
    digests = {hashlib.sha256(onnx_to_tflite(digits.onnx, tmp_path / f"run{i}", "fp32", inputs).model.read_bytes()).hexdigest()
               for i in range(2)}
    assert len(digests) == 1
