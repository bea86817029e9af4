"""TFLite accuracy-aware int8: QuantizationDebugger sensitivity ranking and deny-list mixed precision.

The models carry a real-world quantization trap: one input channel is in raw units (x1000, like
depth in millimetres next to normalised colour) and the first conv scales it back down. Full int8
quantizes the model input with one per-tensor scale, which rounds the two small channels to zero;
keeping the first conv in float (it then reads the float input directly) fixes it. Everything is
real: TFLiteConverter / onnx2tf conversions, the debugger's deny-list, LiteRT in the agent.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUDGET = "agreement:0.98"  # per-timestep argmax agreement with float (the output is [N, 64, 4])


def _data(n: int, seed: int, nchw: bool) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype(np.float32)
    x[..., 0] *= 1000.0  # the raw-unit channel
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> dict[str, Path]:
    """A Keras conv net (stem -> body -> head, output [N, 64, 4]) with calibration/eval .npz files."""
    import keras

    folder = tmp_path_factory.mktemp("keras-mixed")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="body")(x)
    y = keras.layers.Reshape((64, 4))(keras.layers.Conv2D(4, 1, name="head")(x))
    model = keras.Model(inp, y)
    w, b = model.get_layer("stem").get_weights()
    w[:, :, 0, :] *= 1e-3  # the stem scales the raw channel back to the others' range
    model.get_layer("stem").set_weights([w, b])
    model.save(folder / "model.keras")
    np.savez(folder / "calib.npz", image=_data(64, 0, nchw=False))
    eval_x = _data(48, 1, nchw=False)
    np.savez(folder / "eval.npz", image=eval_x)
    np.save(folder / "float_out.npy", model.predict(eval_x, verbose=0))
    return {"model": folder / "model.keras", "calib": folder / "calib.npz", "eval": folder / "eval.npz",
            "float_out": folder / "float_out.npy", "folder": folder}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> dict[str, Path]:
    """The same trap as a PyTorch model exported to ONNX (NCHW input), converted through onnx2tf."""
    import torch

    folder = tmp_path_factory.mktemp("onnx-mixed")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.body = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.head = torch.nn.Conv2d(16, 4, 1)
            with torch.no_grad():
                self.stem.weight[:, 0] *= 1e-3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(torch.relu(self.body(torch.relu(self.stem(x)))))
            return y.permute(0, 2, 3, 1).reshape(x.shape[0], 64, 4)

    torch.onnx.export(Net().eval(), torch.zeros(1, 3, 8, 8), str(folder / "model.onnx"), input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    np.savez(folder / "calib.npz", image=_data(64, 0, nchw=True))
    np.savez(folder / "eval.npz", image=_data(60, 1, nchw=True))  # >= 50: the fallback checks on a held-out half
    return {"model": folder / "model.onnx", "calib": folder / "calib.npz", "eval": folder / "eval.npz", "folder": folder}


def _convert(src: dict[str, Path], digits, out: Path, *extra: str) -> tuple[int, dict | None]:
    from converter.cli import main

    code = main(["--quiet", "convert", str(src["model"]), "--profile", "raspberry-pi-4", "--format", "tflite",
                 "--precision", "int8-static", "--calibration", str(src["calib"]), "--eval", str(src["eval"]),
                 "--key", str(digits.key), "--out", str(out), "--bench-runs", "5", "--min-speedup", "0", *extra])
    report = Path(str(out) + ".report.json")
    return code, (json.loads(report.read_text()) if report.exists() else None)


def _model_file(bundle: Path, folder: Path) -> Path:
    from edge_agent.bundle import read_manifest_unverified

    m = read_manifest_unverified(bundle)
    with tarfile.open(bundle) as tar:
        tar.extract(m.model_file, folder, filter="data")
    return folder / m.model_file


def _op_output_dtypes(model: Path) -> dict[str, str]:
    """{output tensor name: dtype} of every op in the .tflite file (XNNPACK off: the file as written)."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model, threads=1, use_xnnpack=False)
    tensors = it.get_tensor_details()
    return {tensors[i]["name"]: np.dtype(tensors[i]["dtype"]).name
            for op in it._get_ops_details() for i in op["outputs"]}


def _check_mixed(report: dict, model: Path) -> list[str]:
    """Shared assertions on a fallback report and its .tflite; returns the float layers."""
    assert report["precision"] == "int8-mixed"
    sens = report["measurements"]["sensitivity"]
    ranking = sens["ranking"]
    assert len(ranking) >= 3 and all(r["op"] for r in ranking)
    assert "stem" in ranking[0]["layer"] or "tf.nn.convolution/" in ranking[0]["layer"]  # the first conv: the trap
    assert ranking[0]["error_reduction"] > 0 and ranking[0]["agreement_gain"] > 0.2
    assert sens["prerank"][0]["layer"] == ranking[0]["layer"] and sens["prerank"][0]["rmse/scale"] > 1.0

    mixed = report["measurements"]["mixed_precision"]
    assert mixed["passed"] is True and len(mixed["float_layers"]) >= 1
    steps = mixed["steps"]
    assert steps[0]["layer"] is None and steps[0]["passes"] is False  # plain int8 missed the budget
    assert steps[-1]["agreement"] > steps[0]["agreement"] + 0.2 and steps[-1]["error"] < steps[0]["error"] / 10
    assert mixed["agreement_gained"] > 0.2 and steps[-1]["latency_ms"] > 0

    # the file really keeps those layers' outputs in float32, the rest int8, float32 I/O
    dtypes = _op_output_dtypes(model)
    for layer in mixed["float_layers"]:
        assert dtypes[layer] == "float32", (layer, dtypes)
    assert sum(d == "int8" for d in dtypes.values()) >= 2
    acc = report["measurements"]["accuracy"]
    assert acc["passed"] is True and acc["precision"] == "int8-mixed" and acc["agreement"] >= 0.98
    return mixed["float_layers"]


def test_keras_fallback_keeps_sensitive_layer_float(keras_model, digits, capsys, tmp_path):
    from edge_agent.bundle import TrustStore, verify_bundle
    from edge_agent.cli import main as agent
    from edge_agent.runtimes import load_session

    bundle = tmp_path / "keras-mixed.edgebundle"
    code, report = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET)
    assert code == 0, capsys.readouterr().err[-2000:]
    model = _model_file(bundle, tmp_path / "x")
    _check_mixed(report, model)
    passes = {p["pass"]: p for p in report["passes"]}
    assert passes["tflite-mixed-precision"]["sensitivity"]["tool"].startswith("tf.lite.experimental.QuantizationDebugger")

    # the agent verifies the signed bundle and runs it on LiteRT: float I/O, outputs match Keras float
    vb = verify_bundle(bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "unpacked")
    assert vb.manifest.precision == "int8-mixed" and vb.manifest.inputs[0].dtype == "float32"
    session = load_session(tmp_path / "unpacked", vb.manifest, threads=2)
    x = np.load(keras_model["eval"])["image"]
    ref = np.load(keras_model["float_out"])
    got = np.concatenate([session.run({"image": x[i:i + 1]})[0] for i in range(len(x))])
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.98
    capsys.readouterr()
    assert agent(["--home", str(tmp_path / "home"), "bench", str(bundle), "--trust", str(digits.pub), "--runs", "5",
                  "--threads", "2", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["runtime"] == "litert" and bench["precision"] == "int8-mixed" and bench["latency"]["p50_ms"] > 0


def test_sensitivity_off_skips_the_fallback(keras_model, digits, capsys, tmp_path):
    # off + a budget plain int8 misses: the gate refuses, nothing is written
    bundle = tmp_path / "off.edgebundle"
    code, _ = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET, "--sensitivity", "off")
    assert code != 0 and not bundle.exists()
    assert "model fails the accuracy gate" in capsys.readouterr().err
    # with --force the int8 model is written: no ranking, no layer fallback
    code, report = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET, "--sensitivity", "off", "--force")
    assert code == 0
    assert "sensitivity" not in report["measurements"] and "mixed_precision" not in report["measurements"]
    # (independent of --sensitivity: Keras' Reshape becomes an int8 RESHAPE that XNNPACK does not take, which
    # cuts the int8 graph in two; that op type alone is kept float, so the graph is one partition again)
    xnn = report["measurements"]["xnnpack_op_denylist"]
    assert (xnn["partitions_int8"], xnn["partitions_float"], xnn["denylisted_ops"], xnn["partitions_after"]) == (2, 1, ["RESHAPE"], 1)
    assert report["precision"] == "int8-mixed" and xnn["agreement_after"] == xnn["agreement_int8"]
    dtypes = _op_output_dtypes(_model_file(bundle, tmp_path / "y"))
    # Keras numbers layer names per process (functional_1, head_1, ...): match the head conv by its parts
    assert [d for name, d in dtypes.items() if "head" in name and name.endswith("convolution1")] == ["int8"]
    entry = next(p for p in report["passes"] if p["pass"] == "tflite-mixed-precision")
    assert entry["sensitivity"] == "off" and entry["int8_passes"] is False
    assert report["measurements"]["accuracy"]["passed"] is False and report["measurements"]["accuracy"]["forced"] is True


def test_tflite_int8_below_the_speed_floor_writes_nothing_and_offers_fp16(keras_model, digits, capsys, tmp_path,
                                                                          monkeypatch):
    """The TFLite search times its own fp32 .tflite against plain int8 (an injected probe: fp32 1 ms, int8 3 ms):
    below --min-speedup in both timings -> exit 30, nothing written, fp16 first; --force writes plain int8."""
    from converter.passes.context import ConversionContext

    timed: list[Path] = []
    monkeypatch.setattr(ConversionContext, "search_latency_probe",
                        lambda self, runs=None: lambda path: (timed.append(path), 1.0 if path == timed[0] else 3.0)[1])
    bundle = tmp_path / "slow.edgebundle"
    code, report = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET, "--min-speedup", "1.3")
    err = capsys.readouterr().err
    assert code == 30 and not bundle.exists() and len(timed) == 4
    line = next(ln for ln in err.splitlines() if ln.startswith("edge-convert: error:"))
    assert "below --min-speedup 1.3 in both timings" in line and "0.33x fp32" in line
    fp16, no_floor, force = line.split(" ; ")  # the fp16 command first, then the search without a floor, then --force
    assert fp16.endswith("--precision fp16") and no_floor.endswith("--min-speedup 0") and force.endswith("--force")
    assert report["measurements"]["mixed_precision"]["speed_floor"]["int8_ms"] == [3.0, 3.0]
    assert "sensitivity" not in report["measurements"]  # nothing ranked, nothing walked
    code, report = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET, "--min-speedup", "1.3", "--force")
    assert code == 0 and report["measurements"]["accuracy"]["forced"] is True
    assert report["measurements"]["mixed_precision"]["float_layers"] == []


def test_onnx2tf_fallback_from_its_saved_model(onnx_model, digits, capsys, tmp_path):
    bundle = tmp_path / "onnx-mixed.edgebundle"
    code, report = _convert(onnx_model, digits, bundle, "--accuracy-budget", BUDGET, "--max-float-layers", "2")
    assert code == 0, capsys.readouterr().err[-2000:]
    model = _model_file(bundle, tmp_path / "x")
    float_layers = _check_mixed(report, model)
    mixed = report["measurements"]["mixed_precision"]
    assert len(float_layers) <= 2 and mixed["max_float_layers"] == 2
    assert "30 held-out samples" in mixed["selection"] and mixed["steps"][1]["held_out_agreement"] >= 0.98
    assert "onnx2tf" in next(p for p in report["passes"] if p["pass"] == "tflite-convert")["tool"]


def test_onnx_names_tensorflow_refuses_are_renamed(onnx_model, digits, capsys, tmp_path):
    """Paddle exports (PP-OCR cls) name nodes `Conv@0`: onnx2tf failed on them ("not a valid scope name")."""
    import onnx

    model = onnx.load(str(onnx_model["model"]))
    out = model.graph.output[0].name
    for node in model.graph.node:  # end in a Softmax: onnx2tf passes its node name to tf.nn.softmax as a scope
        node.output[:] = [t + "_raw" if t == out else t for t in node.output]
    model.graph.node.append(onnx.helper.make_node("Softmax", [out + "_raw"], [out], axis=-1))
    io_names = {v.name for v in (*model.graph.input, *model.graph.output)}
    renamed = {}
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type}@{i}"
        for j, t in enumerate(node.output):
            if t not in io_names:
                renamed[t] = f"{t}@{j}"
    for node in model.graph.node:
        node.input[:] = [renamed.get(t, t) for t in node.input]
        node.output[:] = [renamed.get(t, t) for t in node.output]
    src = tmp_path / "at-names.onnx"
    onnx.save(model, str(src))
    bundle = tmp_path / "at-names.edgebundle"
    code, report = _convert({**onnx_model, "model": src}, digits, bundle, "--force", "--sensitivity", "off")
    assert code == 0, capsys.readouterr().err[-1500:]
    assert bundle.exists() and report["format"] == "tflite"
    assert report["measurements"]["accuracy"]["checked"] is True


def test_format_auto_candidates_run_the_mixed_precision_passes(keras_model, digits, capsys, tmp_path):
    """`--format auto` builds each candidate with its whole recipe, mixed-precision passes included.

    Before recipes were shared, auto's candidates ran only convert + gate: the plain int8 model missed
    the budget, the XNNPACK op deny-list never ran, and the conversion failed where `--format tflite` passed.
    """
    bundle = tmp_path / "auto-mixed.edgebundle"
    code, report = _convert(keras_model, digits, bundle, "--accuracy-budget", BUDGET, "--format", "auto")
    assert code == 0, capsys.readouterr().err[-2000:]
    assert report["format"] == "tflite" and report["precision"] == "int8-mixed"
    passes = [p["pass"] for p in report["passes"]]
    assert "tflite:tflite-mixed-precision" in passes and passes.index("tflite:tflite-mixed-precision") < passes.index(
        "tflite:accuracy-gate")
    m = report["measurements"]
    assert m["xnnpack_op_denylist"]["denylisted_ops"] == ["RESHAPE"]  # as with an explicit --format tflite
    assert m["mixed_precision"]["passed"] is True and m["accuracy"]["passed"] is True
    assert [c["precision"] for c in m["candidates"]] == ["int8-mixed"] and m["format_selection"]["chosen"] == "tflite"
