"""QAT for PyTorch users: fake-quant fine-tuning (converter.qat) -> QDQ ONNX -> edge-convert keeps its scales.

Real torch QAT on the session's digits CNN, real torch.onnx export, the real converter CLI and ONNX Runtime.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from converter.cli import main as convert_main
from converter.onnx.int8_arithmetic import host_saturates
from converter.onnx.prequantized import float_twin, is_prequantized
from edge_agent.bundle import TrustStore, read_manifest_unverified, verify_bundle
from examples import digits_cnn
from examples.qat_digits import fine_tune


@dataclass
class Qat:
    model: object
    onnx: Path
    qparams: dict
    torch_logits: np.ndarray
    accuracy: float


@pytest.fixture(scope="module")
def qat(digits, tmp_path_factory) -> Qat:
    import torch

    from converter.qat import export_qdq_onnx, prepare_qat, quantization_params
    from examples.digits_cnn import load_split

    x_train, y_train, _, _ = load_split()
    example = torch.from_numpy(x_train[:1])
    model = fine_tune(prepare_qat(digits.model, example), x_train, y_train, epochs=2)
    path = export_qdq_onnx(model, example, tmp_path_factory.mktemp("qat") / "digits.qat.onnx")
    with torch.no_grad():
        logits = model(torch.from_numpy(digits.x_test)).numpy()
    return Qat(model, path, quantization_params(model), logits, float((logits.argmax(1) == digits.y_test).mean()))


def convert(digits, qat: Qat, out: Path, *extra: str) -> int:
    return convert_main(["--quiet", "convert", str(qat.onnx), "--profile", "raspberry-pi-4", "--eval",
                         str(digits.evaluation), "--key", str(digits.key), "--out", str(out), "--bench-runs", "3", *extra])


@pytest.fixture(scope="module")
def qat_bundle(digits, qat, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat-bundle") / "digits-qat.edgebundle"
    assert convert(digits, qat, out) == 0  # profile recipe int8-static: must keep the model's own QDQ
    return out


def ort_run(path: Path, x: np.ndarray, optimized_to: Path | None = None, exact: bool = False) -> np.ndarray:
    """exact: QDQ as written (basic optimizations), the arithmetic of the Pi's kernels (converter.onnx.int8_arithmetic)."""
    so = ort.SessionOptions()
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if optimized_to is not None:
        so.optimized_model_filepath = str(optimized_to)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_qat_export_is_a_qdq_model_the_converter_detects(qat, digits):
    model = onnx.load(str(qat.onnx))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8, ops
    assert "BatchNormalization" not in ops  # convert_fx folded BN into the convs
    assert is_prequantized(model)
    assert not is_prequantized(onnx.load(str(digits.onnx)))  # the float export is not


def test_bundle_keeps_the_learned_scales(qat_bundle, qat, digits, tmp_path):
    vb = verify_bundle(qat_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "b")
    assert vb.manifest.precision == "int8-qat"
    model = onnx.load(str(tmp_path / "b" / vb.manifest.model_file))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # input quantizer: the first fake-quant module of the prepared model (observes the image)
    q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    assert np.allclose(inits[q_in.input[1]], qat.qparams["activation_post_process_0"]["scale"], rtol=1e-6)
    # per-channel weight scales of the first conv (BN folded) = its weight fake-quant's scales
    w_scales = [inits[n.input[1]] for n in model.graph.node
                if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8]
    first = qat.qparams["features.0.weight_fake_quant"]["scale"]
    assert any(s.shape == first.shape and np.allclose(s, first, rtol=1e-6) for s in w_scales)
    assert len(w_scales) == 4  # 3 convs + classifier carry int8 weights


def test_bundle_runs_as_int8_in_onnx_runtime_and_keeps_accuracy(qat_bundle, qat, digits, tmp_path):
    vb = verify_bundle(qat_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "b")
    optimized = tmp_path / "optimized.onnx"
    logits = ort_run(tmp_path / "b" / vb.manifest.model_file, digits.x_test, optimized)
    fused = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert fused["QLinearConv"] == 3 and fused["Conv"] == 0, fused  # ORT runs the convs in int8
    if host_saturates():  # this host's fused u8s8 kernels saturate (x86 without VNNI): judge the Pi's exact arithmetic
        logits = ort_run(tmp_path / "b" / vb.manifest.model_file, digits.x_test, exact=True)
    accuracy = float((logits.argmax(1) == digits.y_test).mean())
    assert accuracy >= digits.float_accuracy - 0.02, (accuracy, digits.float_accuracy)
    agreement = float((logits.argmax(1) == qat.torch_logits.argmax(1)).mean())
    assert agreement >= 0.99, agreement  # the runtime computes what torch's fake-quant model trained
    report = vb.manifest.measurements
    assert report["quantization"]["ops"]["QuantizeLinear"] >= 4
    assert report["accuracy"]["passed"] and report["accuracy"]["top1_drop_points"] <= 2.0


def test_report_says_not_requantized(qat_bundle):
    import json

    report = json.loads(Path(str(qat_bundle) + ".report.json").read_text())
    quantize = next(p for p in report["passes"] if p["pass"] == "quantize")
    assert quantize["recipe"] == "int8-qat" and quantize["requested"] == "int8-static"
    assert "not re-quantized" in quantize["note"] and quantize["reference"].startswith("float twin")
    assert not any(p["pass"] == "mixed-precision" for p in report["passes"])


def test_fp32_keeps_qdq_and_fp16_is_refused(digits, qat, tmp_path, capsys):
    out = tmp_path / "fp32.edgebundle"
    assert convert(digits, qat, out, "--precision", "fp32") == 0
    assert read_manifest_unverified(out).precision == "int8-qat"
    bad = tmp_path / "fp16.edgebundle"
    capsys.readouterr()
    assert convert(digits, qat, bad, "--precision", "fp16") == 2  # a usage error (it was 1, the code for a bug)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already quantized" in err[0], err
    assert not bad.exists()


def test_float_twin_removes_qdq_and_matches_the_int8_model(qat, digits, tmp_path):
    twin = float_twin(onnx.load(str(qat.onnx)))
    onnx.checker.check_model(twin)
    assert not is_prequantized(twin)
    path = tmp_path / "twin.onnx"
    onnx.save(twin, str(path))
    x = digits.x_test[:200]
    agree = float((ort_run(path, x).argmax(1) == ort_run(qat.onnx, x).argmax(1)).mean())
    assert agree >= 0.97, agree


def test_agent_runs_the_qat_bundle(qat_bundle, qat, digits, tmp_path, capsys):
    import json

    from edge_agent.cli import main as agent_main

    n = 50
    pngs = digits_cnn.save_pngs(tmp_path / "png", digits.x_test[:n])
    capsys.readouterr()
    assert agent_main(["run", str(qat_bundle), *map(str, pngs), "--trust", str(digits.pub), "--json"]) == 0
    labels = np.array([r["label"] for r in json.loads(capsys.readouterr().out)])
    assert float((labels == qat.torch_logits[:n].argmax(1)).mean()) >= 0.96  # PNGs round pixels to 1/255


def test_tflite_format_is_refused_for_a_qdq_model(digits, qat, tmp_path, capsys):
    out = tmp_path / "t.edgebundle"
    capsys.readouterr()
    assert convert(digits, qat, out, "--format", "tflite") == 2  # a usage error (it was 1, the code for a bug)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX bundles only" in err[0], err
    assert not out.exists()


def test_post_training_qdq_model_is_kept_as_is(int8_bundle, digits, tmp_path):
    """The converter's own int8 output fed back: detected, kept (not quantized twice), its twin matches float."""
    vb = verify_bundle(int8_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "b")
    int8 = tmp_path / "b" / vb.manifest.model_file
    twin = tmp_path / "twin.onnx"
    onnx.save(float_twin(onnx.load(str(int8))), str(twin))
    x = digits.x_test[:200]
    assert float((ort_run(twin, x).argmax(1) == digits.float_predictions[:200]).mean()) >= 0.98
    out = tmp_path / "again.edgebundle"
    rc = convert_main(["--quiet", "convert", str(int8), "--profile", "raspberry-pi-4", "--eval", str(digits.evaluation),
                       "--key", str(digits.key), "--out", str(out), "--bench-runs", "3"])
    assert rc == 0 and read_manifest_unverified(out).precision == "int8-qat"
    vb2 = verify_bundle(out, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "c")
    again = onnx.load(str(tmp_path / "c" / vb2.manifest.model_file))
    assert Counter(n.op_type for n in again.graph.node)["QuantizeLinear"] == \
        Counter(n.op_type for n in onnx.load(str(int8)).graph.node)["QuantizeLinear"]


def test_float_twin_keeps_the_clamp_a_quantizer_folded_relu_into():
    """ORT's quantizer drops a Relu before a Q with zero point 0: the Q's saturation is the Relu."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    twin = float_twin(model)
    assert [n.op_type for n in twin.graph.node] == ["Clip"]
    s = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    out = s.run(None, {"x": np.array([[-3.0, 0.04, 1.23, 99.0]], np.float32)})[0]
    assert np.allclose(out, [[0.0, 0.04, 1.23, 25.5]])  # clamped to [0, 255 * 0.1], not rounded
