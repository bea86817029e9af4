"""int4-weight: 4-bit MatMul weights (ONNX Runtime MatMulNBits) through the converter CLI and the agent.

A MatMul-heavy MLP (64 -> 512 -> 512 -> 10, weights ~1.2 MB in float) is trained here on scikit-learn's
digits, exported by torch as Gemm nodes, converted with --precision int4-weight, verified and run by
the agent on held-out digits. A Conv-only model must be refused with one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from converter.cli import main as convert_main
from converter.errors import NothingToQuantize
from edge_agent.bundle import TrustStore, read_manifest_unverified, verify_bundle
from edge_agent.cli import main as agent_main
from edge_agent.runtimes import load_session
from examples import digits_cnn

HIDDEN = 512


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train_mlp(x: np.ndarray, y: np.ndarray, epochs: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return digits_cnn.fit(DigitsMLP(), x, y, epochs, lr=1e-3)


@pytest.fixture(scope="module")
def mlp(digits, tmp_path_factory):
    """The trained MLP as ONNX, flat-digit calibration/eval .npz files, its float predictions."""
    folder = tmp_path_factory.mktemp("int4")
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    model = _train_mlp(x_train, y_train)
    path = folder / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 64),), str(path), dynamo=True, external_data=False,
                          input_names=["x"], output_names=["logits"], verbose=False)
        float_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    np.savez(folder / "calib.npz", x=x_train[:128])
    np.savez(folder / "eval.npz", x=x_test, labels=y_test)
    return {"folder": folder, "onnx": path, "x_test": x_test, "y_test": y_test, "float_pred": float_pred,
            "float_acc": float((float_pred == y_test).mean())}


def _convert(m: dict, digits, out: Path, *extra: str, source: Path | None = None) -> int:
    return convert_main(["--quiet", "convert", str(source or m["onnx"]), "--profile", "raspberry-pi-4",
                         "--calibration", str(m["folder"] / "calib.npz"), "--eval", str(m["folder"] / "eval.npz"),
                         "--key", str(digits.key), "--out", str(out), "--bench-runs", "3", *extra])


@pytest.fixture(scope="module")
def int4_bundle(mlp, digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int4-bundle") / "mlp-int4.edgebundle"
    assert _convert(mlp, digits, out, "--precision", "int4-weight") == 0
    return out


def test_int4_bundle_verifies_and_holds_matmulnbits(int4_bundle, mlp, digits, tmp_path):
    vb = verify_bundle(int4_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "b")
    m = vb.manifest
    assert m.precision == "int4-weight" and m.format == "onnx" and m.runtime == "onnxruntime"
    model = onnx.load(str(tmp_path / "b" / m.model_file))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 3, ops  # all three Linear layers (exported as Gemm) are 4-bit
    assert "Gemm" not in ops and "MatMul" not in ops
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4

    float_weight_bytes = 4 * (64 * HIDDEN + HIDDEN * HIDDEN + HIDDEN * 10)
    sizes = m.measurements["sizes"]
    assert sizes["model_bytes"] < 0.35 * float_weight_bytes, sizes  # 4 bits + one fp32 scale per 32 weights
    assert sizes["model_bytes"] < 0.35 * sizes["float_model_bytes"], sizes

    report = json.loads(Path(str(int4_bundle) + ".report.json").read_text())
    quant = next(p for p in report["passes"] if p["pass"] == "quantize")
    assert quant["recipe"] == "int4-weight" and quant["quantized_matmuls"] == 3
    assert quant["gemm_rewritten_as_matmul"] == 3 and quant["quantized_weight_share"] == 1.0


def test_int4_keeps_accuracy_through_the_gate(int4_bundle, mlp):
    acc = read_manifest_unverified(int4_bundle).measurements["accuracy"]
    assert acc["checked"] and acc["passed"] and acc["precision"] == "int4-weight"
    assert acc["float_top1_accuracy"] == pytest.approx(mlp["float_acc"], abs=1e-6)
    assert acc["float_top1_accuracy"] > 0.9  # the MLP really learned the digits
    assert acc["top1_drop_points"] <= 2.0
    assert acc["top1_agreement"] >= 0.97


def test_agent_runs_int4_bundle(int4_bundle, mlp, digits, tmp_path, capsys):
    # library: the agent's ONNX Runtime session on all held-out digits
    vb = verify_bundle(int4_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "u")
    session = load_session(vb.unpacked_to, vb.manifest, threads=1)
    pred = np.array([session.run({"x": row[None]})[0].argmax() for row in mlp["x_test"]])
    agreement = float((pred == mlp["float_pred"]).mean())
    assert agreement >= 0.97, agreement
    assert float((pred == mlp["y_test"]).mean()) >= mlp["float_acc"] - 0.03

    # CLI: `edge-agent run` on .npy inputs
    n = 20
    files = []
    for i in range(n):
        files.append(tmp_path / f"d{i}.npy")
        np.save(files[-1], mlp["x_test"][i:i + 1])
    capsys.readouterr()
    assert agent_main(["run", str(int4_bundle), *map(str, files), "--trust", str(digits.pub), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    labels = np.array([r["label"] for r in results])
    assert (labels == pred[:n]).all()


def test_conv_only_model_is_refused_with_one_line(digits, tmp_path, capsys):
    """A Conv-only net has nothing int4-weight can compress: refused, instead of writing a float model."""
    conv_only = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 8), nn.Flatten()).eval()
    src = tmp_path / "conv.onnx"
    with torch.no_grad():
        torch.onnx.export(conv_only, (torch.zeros(1, 1, 8, 8),), str(src), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"], verbose=False)
    out = tmp_path / "conv.edgebundle"
    capsys.readouterr()
    rc = convert_main(["--quiet", "convert", str(src), "--profile", "x86-64-cpu", "--eval", str(digits.evaluation),
                       "--key", str(digits.key), "--out", str(out), "--bench-runs", "0", "--precision", "int4-weight"])
    err = capsys.readouterr().err
    assert rc == NothingToQuantize.exit_code == 2
    assert not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge-convert: error: int4-weight found no MatMul/Gemm"), err


def test_int4_weight_is_refused_for_tflite(mlp, digits, tmp_path, capsys):
    out = tmp_path / "t.edgebundle"
    capsys.readouterr()
    rc = _convert(mlp, digits, out, "--precision", "int4-weight", "--format", "tflite")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()  # a usage error (FormatError), not 1: a bug to report
    assert "TFLite bundles support" in err and "not int4-weight" in err, err


def test_gemm_rewrite_is_exact():
    """Gemm(alpha, beta, transB) -> MatMul + Add gives the same numbers before any quantization."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from converter.onnx.weight_only_int4 import gemm_to_matmul

    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((48, 64)).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((3, 64)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    np.testing.assert_allclose(run(model), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(before, 0.5 * x @ w.T + 2.0 * c, rtol=1e-5, atol=1e-5)


def test_constant_node_weights_are_quantized_and_small_k_is_left_alone(tmp_path):
    """Weights held in Constant nodes (paddle2onnx style) are found; a K < 32 MatMul stays float."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from converter.onnx.weight_only_int4 import quantize_weight_only

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((128, 16)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
         helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [numpy_helper.from_array(w2, "w2")])
    src, dst = tmp_path / "c.onnx", tmp_path / "c.q4.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    result = quantize_weight_only(src, dst)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops == ["MatMulNBits", "MatMul"] and result.quantized_params == 128 * 16
    assert result.float_params_left == 16 * 8
    x = rng.standard_normal((1, 128)).astype(np.float32)
    y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ w1 @ w2
    assert float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref))) > 0.99


def test_format_auto_with_int4_packs_onnx_and_names_why_tflite_was_not_built(mlp, digits, tmp_path, capsys):
    out = tmp_path / "auto.edgebundle"
    capsys.readouterr()
    assert _convert(mlp, digits, out, "--precision", "int4-weight", "--format", "auto") == 0
    summary = capsys.readouterr().out
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["format"] == "onnx" and report["precision"] == "int4-weight"
    tflite = next(c for c in report["measurements"]["candidates"] if c["format"] == "tflite")
    assert tflite["built"] is False and "int4-weight" in tflite["reason"]
    assert "(could not be built: " in summary and "(failed gate)" not in summary
