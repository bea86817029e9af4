"""NaN/inf answers never pass the accuracy gate.

A candidate answering NaN used to score a perfect cosine (NaN norms fell through to 1.0) and, for classifiers,
an agreement decided by where argmax met the first NaN; a float model answering NaN on the eval data passed
the gate with `max_abs_diff: NaN` in its report. fp16 overflow is the usual way a converted model gets there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.accuracy.budget import Budget
from converter.accuracy.metrics import score
from converter.passes.accuracy_gate import compare_outputs, gate_failures

RNG = np.random.default_rng(0)


def _with_nan(a: np.ndarray, rows: list[int]) -> np.ndarray:
    b = a.copy()
    b[rows] = np.nan
    return b


@pytest.mark.parametrize("task,shape", [("generic", (20, 6)), ("classification", (20, 10)),
                                        ("map", (20, 1, 4, 4)), ("sequence", (20, 5, 7))])
def test_a_candidate_answering_nan_loses_those_samples_and_fails_any_budget(task, shape):
    ref = RNG.random(shape).astype(np.float32)
    s = score(ref, ref.copy(), task)
    assert s["agreement"] == 1.0 and "non_finite_samples" not in s
    s = score(ref, _with_nan(ref, [0, 1, 2, 3]), task)
    assert s["agreement"] == pytest.approx(16 / 20) and s["mean_cosine"] == pytest.approx(16 / 20, abs=1e-6)
    assert s["non_finite_samples"] == 4 and s["error"] == float("inf") and s.hits.sum() == s.hits.size * 16 // 20
    lenient = Budget(min_agreement=0.0, max_top1_drop=100.0, min_cosine=0.0)
    assert any("answers NaN or inf on 4 samples where float does not" in r for r in lenient.failures(s, task))


def test_the_gate_names_nan_answers_of_either_model_whatever_the_budget():
    ref = RNG.random((8, 3))
    m = compare_outputs(ref, _with_nan(ref, [5]), None, classification=True)
    assert m["top1_agreement"] == pytest.approx(7 / 8) and m["max_abs_diff"] is None and m["non_finite_samples"] == 1
    assert gate_failures(m, 100.0, 0.0, 0.0) == [
        "the converted model answers NaN or inf on 1 of 8 samples where float does not (an fp16 overflow? keep the "
        "layers that overflow float, or use int8)"]
    m = compare_outputs(_with_nan(ref, [0, 1]), ref, None, classification=False)
    assert m["float_non_finite_samples"] == 2 and m["mean_cosine"] == pytest.approx(6 / 8)
    assert "the float model itself answers NaN or inf on 2 of 8 samples" in gate_failures(m, 100.0, 0.0, 0.0)[0]


def test_a_model_whose_float_answers_are_nan_on_the_eval_data_is_refused(tmp_path, capsys):
    """sqrt(x) on data with negative values: float answers NaN; the same model on positive data passes."""
    from converter.cli import main as convert_main
    from edge_agent.bundle import generate_keypair

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "sqrt.onnx")
    key, _ = generate_keypair(tmp_path)
    data = RNG.standard_normal((32, 4)).astype(np.float32)
    np.savez(tmp_path / "signed.npz", x=data)
    np.savez(tmp_path / "positive.npz", x=np.abs(data) + 0.1)

    def convert(eval_file: str) -> int:
        return convert_main(["convert", str(tmp_path / "sqrt.onnx"), "--precision", "fp16", "--profile", "x86-64-cpu",
                             "--eval", str(tmp_path / eval_file), "--key", str(key), "--bench-runs", "0",
                             "--out", str(tmp_path / f"{eval_file}.edgebundle")])

    assert convert("signed.npz") == 30
    err = capsys.readouterr().err
    assert "the float model itself answers NaN or inf on" in err and "Nothing to accept" in err
    assert not (tmp_path / "signed.npz.edgebundle").exists()
    assert convert("positive.npz") == 0


def _fp16_of(tmp_path: Path, nodes: list, consts: dict[str, float], data: np.ndarray) -> tuple[dict, Path]:
    """Convert a [1, 4] -> [1, 4] graph at fp16; (the quantize pass's report, the converted model file)."""
    import json
    import tarfile

    from converter.cli import main as convert_main
    from edge_agent.bundle import generate_keypair
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.full((1, 4), v, np.float32), n) for n, v in consts.items()]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    key, _ = generate_keypair(tmp_path)
    np.savez(tmp_path / "eval.npz", x=data)
    out = tmp_path / "m.edgebundle"
    assert convert_main(["convert", str(tmp_path / "m.onnx"), "--precision", "fp16", "--profile", "x86-64-cpu",
                         "--eval", str(tmp_path / "eval.npz"), "--key", str(key), "--bench-runs", "0",
                         "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        tar.extract("model/model.onnx", tmp_path / "unpacked", filter="data")
    passes = {p["pass"]: p for p in json.loads(Path(f"{out}.report.json").read_text())["passes"]}
    return passes, tmp_path / "unpacked" / "model" / "model.onnx"


def _as_fp16_device(model: Path, x: np.ndarray) -> np.ndarray:
    """Run as a device whose kernels compute in fp16: ORT's CPU optimizer drops fp32->fp16->fp32 Cast pairs,
    which hides an overflow on this host, so run the graph exactly as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_fp16_keeps_float32_the_nodes_whose_constants_fp16_cannot_hold(tmp_path):
    """y = (x * 1e5) * 1e-5: ORT's float16 tool clamped 1e5 to 65504, so every answer came out x 0.655, which
    argmax and cosine both pass. The Mul reading 1e5 stays float32 (and the one reading its output) now."""
    data = RNG.standard_normal((32, 4)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "a"], ["t"], name="scale_up"),
             helper.make_node("Mul", ["t", "b"], ["y"], name="scale_down")]
    passes, model = _fp16_of(tmp_path, nodes, {"a": 1e5, "b": 1e-5}, data)
    assert passes["quantize"]["float32_nodes"]["constants"] == ["scale_up"]
    assert passes["accuracy-gate"]["max_abs_diff"] < 0.02  # clamped: 0.345 x |x|, about 1
    assert np.allclose(_as_fp16_device(model, data), data, rtol=1e-3, atol=1e-3)


def test_fp16_keeps_float32_the_nodes_around_an_activation_that_would_overflow(tmp_path):
    """y = (x * 300)^2 * 1e-5: no constant is out of range, but the square reaches ~8e5 on these inputs; computed
    in fp16 it is inf. The nodes making and reading it stay float32, and the answers stay float's."""
    data = RNG.standard_normal((32, 4)).astype(np.float32) * 3
    nodes = [helper.make_node("Mul", ["x", "a"], ["t"], name="scale"),
             helper.make_node("Mul", ["t", "t"], ["u"], name="square"),
             helper.make_node("Mul", ["u", "b"], ["y"], name="shrink")]
    passes, model = _fp16_of(tmp_path, nodes, {"a": 300.0, "b": 1e-5}, data)
    kept = passes["quantize"]["float32_nodes"]
    assert kept["constants"] == [] and kept["activations"] == ["square", "shrink"]
    assert np.allclose(_as_fp16_device(model, data), (data * 300) ** 2 * 1e-5, rtol=1e-2)
