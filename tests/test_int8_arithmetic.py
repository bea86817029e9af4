"""The accuracy gate scores int8 with the target's arithmetic, not a saturating host kernel's.

ORT's fused u8 x s8 kernels on x86 without VNNI add product pairs in int16 (vpmaddubsw): 255 x 127 twice
comes out as 32767, not 64770. The Pi's NEON kernels are exact. These tests fail on such a host if the
converter evaluates with the fused kernels, and check the host detection on real /proc/cpuinfo texts.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.data import Dataset
from converter.onnx.int8_arithmetic import exact_int8_for, saturating_int8
from converter.runners import run_model

K = 64


def _qdq_matmul(path) -> float:
    """x (uint8, all 255) @ w (int8, all 127), through QDQ: exact float result 255*127*K."""
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"]),
             helper.make_node("MatMul", ["xf", "wf"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.full((K, 4), 127, np.int8), "wq"),
             numpy_helper.from_array(np.array(1.0, np.float32), "ws"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(10000.0, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, K])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return round(255 * 127 * K / 10000) * 10000.0


def test_int8_scored_for_an_arm_target_is_exact_on_any_host(tmp_path):
    exact = _qdq_matmul(tmp_path / "sat.onnx")
    data = Dataset({"xq": np.full((2, K), 255, np.uint8)})
    out = run_model(tmp_path / "sat.onnx", data, exact_int8=exact_int8_for("aarch64"))[0]
    assert np.all(out == exact), f"got {out[0, 0]}, exact {exact}: the gate measured this host's saturating kernels"


def test_hosts_whose_int8_kernels_saturate():
    epyc = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
    cascade_lake = "flags\t\t: avx2 avx512f avx512bw avx512_vnni\n"
    alder_lake = "flags\t\t: avx2 avx_vnni\n"
    pi4 = "Features\t: fp asimd evtstrm crc32 cpuid\n"
    assert saturating_int8("x86_64", epyc)
    assert not saturating_int8("x86_64", cascade_lake)
    assert not saturating_int8("x86_64", alder_lake)
    assert not saturating_int8("aarch64", pi4)


def test_an_x86_target_is_scored_on_the_host_kernels():
    assert exact_int8_for("x86_64") is False  # an x86 device runs the same kernels as this x86 host (or better)


def test_self_test_outputs_are_recorded_as_the_arm_target_computes_them(int8_bundle, tmp_path):
    """The device re-runs the bundle's self-test inputs after install and compares: outputs recorded with this host's
    saturating kernels would be the host's answers, not the Pi's (an install could fail on a correct model)."""
    import tarfile

    with tarfile.open(int8_bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    recorded = np.load(tmp_path / "selftest.npz")
    inputs = {k.removeprefix("input."): recorded[k] for k in recorded.files if k.startswith("input.")}
    exact = run_model(tmp_path / "model" / "model.onnx", Dataset(inputs), exact_int8=True)[0]
    assert np.array_equal(recorded["output.0"], exact)


def test_the_agent_checks_a_pi_int8_bundle_in_the_arithmetic_it_was_recorded_in(int8_bundle, tmp_path):
    """On a CPU whose fused int8 kernels saturate the agent's self-test runs the bundle as written (exact, as the
    Pi does); the fused kernels here missed the recorded outputs by ~3 logits on the digits CNN and refused it."""
    import json
    import tarfile

    from edge_agent.bundle import Manifest
    from edge_agent.ota.model_check import load_checked
    from edge_agent.runtimes.int8_host import host_saturates

    with tarfile.open(int8_bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    manifest = Manifest.from_dict(json.loads((tmp_path / "manifest.json").read_text()))
    session, report = load_checked(tmp_path, manifest, latency_budget_ms=None)
    session.close()
    assert report.samples > 0 and report.max_abs_error < 1e-3
    assert report.to_dict()["selftest_arithmetic"] == ("exact-int8" if host_saturates() else "served")
