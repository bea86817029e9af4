"""The TFLite rows of scripts/bench_quant_real.py: the same models, photos and held-out split, on LiteRT.

  tflite fp32           onnx2tf's float32 .tflite of the user's model (normalised input): the speed reference
  tflite default int8   onnx2tf's full-integer int8 of the same model, TFLiteConverter's defaults (minmax,
                        per-channel weights) calibrated on the same photos: the ORT-defaults analogue
  edgekit tflite int8   `edge-convert convert --format tflite` with the profile's defaults and the model's --mean/--std
                        (fold-input: the bundle takes grey levels, quantized with scale 1), as a user would run it
Agreement against the float ONNX model's top-1 on the held-out photos (LiteRT's int8 kernels are exact integer
arithmetic, so this host's answers are the device's). Latency: median ms, batch 1, 2 threads, XNNPACK, every
variant timed in alternating blocks in one process (scripts/bench_quant.time_interleaved); speed-up vs tflite fp32.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from converter.accuracy.metrics import score

log = logging.getLogger("bench_quant_real")


def edgekit_tflite(src: Path, calib: Path, select: Path, work: Path, normalization: tuple[np.ndarray, np.ndarray],
                   extra: list[str] = ()) -> tuple[dict, Path, float]:
    """`edge-convert convert --format tflite` with the profile's defaults (budget, search, XNNPACK deny-list), told
    the preprocessing as a user would (the fold). Returns (report, the bundle's .tflite, seconds)."""
    from converter.cli import main
    from edge_agent.bundle import generate_keypair, read_manifest_unverified

    key, _ = generate_keypair(work / "keys-tflite", overwrite=True)
    out = work / "model.tflite.edgebundle"
    mean, std = normalization
    args = ["-q", "convert", str(src), "--profile", "raspberry-pi-4", "--format", "tflite", "--calibration", str(calib),
            "--eval", str(select), "--key", str(key), "--out", str(out), "--bench-runs", "10", "--force",
            "--calibration-method", "auto",  # minmax vs linearquantile:99.9, chosen on the selection half
            "--mean", ",".join(f"{v:.9g}" for v in mean), "--std", ",".join(f"{v:.9g}" for v in std), *extra]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0, "TFLite conversion failed"
    seconds = time.perf_counter() - t0
    m = read_manifest_unverified(out)
    with tarfile.open(out) as tar:
        tar.extract(m.model_file, work / "bundle.tflite", filter="data")
    return json.loads(Path(str(out) + ".report.json").read_text()), work / "bundle.tflite" / m.model_file, seconds


def _runner(model: Path, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """One NHWC sample -> logits, LiteRT with XNNPACK (asserted: a silent fallback to builtin kernels is slower)."""
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    m = TFLiteModel(model, threads)
    assert m.delegate == "XNNPACK", f"{model.name}: XNNPACK not applied"
    return lambda x: m.run_list([x])[0]


def _outputs(model: Path, x_nhwc: np.ndarray) -> np.ndarray:
    run = _runner(model)
    return np.concatenate([run(x_nhwc[i:i + 1]) for i in range(len(x_nhwc))])


def _int8_ops(model: Path) -> dict[str, int]:
    """Weighted ops (conv, depthwise, fully connected) by input dtype: int8 kernels vs layers kept float."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model, threads=1, use_xnnpack=False)
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    out = {"int8": 0, "float": 0}
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out["int8" if dtypes[int(op["inputs"][0])] in ("int8", "uint8") else "float"] += 1
    return out


def tflite_rows(float_model: Path, calib: np.ndarray, test: np.ndarray, ref: np.ndarray, work: Path,
                normalization: tuple[np.ndarray, np.ndarray], runs: int, extra: list[str] = ()) -> tuple[dict, dict]:
    """({label: row}, edgekit's conversion summary). calib/test: normalised NCHW photos; ref: float ONNX logits."""
    import onnx
    import onnxslim

    from converter.data import Dataset
    from converter.onnx.fold_input import to_pixels
    from converter.onnx.model_io import tensor_specs
    from converter.tflite.onnx2tf import nhwc, onnx_to_tflite
    from scripts.bench_quant import time_interleaved

    report, ours, seconds = edgekit_tflite(float_model, work / "calib.npz", work / "select.npz", work, normalization,
                                           list(extra))
    slim = work / "float.slim.onnx"  # what the converter's clean-up pass gives onnx2tf
    onnx.save(onnxslim.slim(onnx.load(str(float_model))), str(slim))
    ins, _ = tensor_specs(slim)
    t0 = time.perf_counter()
    plain = onnx_to_tflite(slim, work / "tflite-default", "int8-static", ins, Dataset({ins[0].name: calib}), len(calib),
                           measured_ranges=False)  # TensorFlow's own calibration records, as TFLiteConverter gives them
    default_s = time.perf_counter() - t0
    fold = next((p for p in report["passes"] if p["pass"] == "fold-input"), {})
    ours_input = nhwc(to_pixels(test, fold["scale"], fold["offset"]) if fold.get("folded") else test)
    models = {"tflite fp32": plain.float32, "tflite default int8": plain.model, "edgekit tflite int8": ours}
    inputs = {k: ours_input if k == "edgekit tflite int8" else nhwc(test) for k in models}
    stats = time_interleaved({k: (lambda run=_runner(m), x=inputs[k][:1]: run(x)) for k, m in models.items()},
                             runs, warmup=3, block=10)
    lat = {k: float(v["p50_ms"]) for k, v in stats.items()}
    rows = {}
    for label, model in models.items():
        s = score(ref, _outputs(model, inputs[label]), "classification")
        rows[label] = {"agreement": s["agreement"], "clear_agreement": s.get("clear_agreement"),
                       "clear_share": s.get("clear_share"), "latency_ms": round(lat[label], 3),
                       "speedup_vs_float": round(lat["tflite fp32"] / lat[label], 2),
                       "int8_kernels": _int8_ops(model)["int8"], "float_kernels": _int8_ops(model)["float"]}
    convert = next((p for p in report["passes"] if p["pass"] == "tflite-convert"), {})
    mixed = report["measurements"].get("mixed_precision", {})
    summary = {"precision": report["precision"], "calibration": convert.get("calibration_method"),
               "calibration_candidates": [{k: r.get(k) for k in ("method", "agreement", "error")}
                                          for r in (convert.get("calibration_search") or {}).get("candidates", [])],
               "gate_passed": report["measurements"].get("accuracy", {}).get("passed"),
               "convert_seconds": round(seconds, 1), "default_int8_seconds": round(default_s, 1),
               "input_folded": bool(fold.get("folded")), "pixel_input_quantization": convert.get("pixel_input_quantization"),
               "compensation": (convert.get("compensation") or {}).get("chosen"),
               "float_layers": mixed.get("float_layers", []), "tradeoff_curve": mixed.get("steps"),
               "xnnpack_op_denylist": (report["measurements"].get("xnnpack_op_denylist") or {}).get("denylisted_ops")}
    return rows, summary
