#!/usr/bin/env python3
"""TFLite int8 with and without the mixed-precision fallback on real PP-OCR models (RapidOCR wheel),
side by side with TFLite fp32 and ONNX Runtime float/int8, all measured in one run.

  PYTHONPATH=. python scripts/bench_accuracy_tflite.py [--models cls,rec] [--budget agreement:0.95] [--json]

Variants (ONNX -> onnx2tf for every TFLite one; calibration and eval data as scripts/bench_accuracy.py):
  ort-float        the pinned float ONNX model in ONNX Runtime
  ort-int8         edgekit's ONNX int8 recipe (`edge-convert --format onnx`, accuracy-aware, same budget)
  tflite-fp32      onnx2tf's float32 .tflite
  tflite-int8      onnx2tf's full-integer int8 (float I/O), what `--format tflite` gave before the fallback
  tflite-mixed     `edge-convert --format tflite --precision int8-static --accuracy-budget ...`: int8 with
                   the sensitive layers kept float (QuantizationDebugger deny-list), or plain int8 if it passed
  tflite-int16x8   int16 activations / int8 weights from the same SavedModel (--int16: slow, few runs)
Agreement with float ONNX on held-out inputs; latency median ms, batch 1, 2 threads, LiteRT with
XNNPACK, timed in alternating blocks (scripts/bench_quant.time_interleaved) so load hits all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from converter.accuracy.metrics import score  # noqa: E402
from converter.onnx.model_io import ort_session  # noqa: E402
from examples import ocr_samples as ocr  # noqa: E402
from scripts.bench_accuracy import SETUPS, data  # noqa: E402
from bench_scratch import add_keep_work, run_folder  # noqa: E402


def _convert(src: Path, work: Path, fmt: str, calib: Path, select: Path, budget: str, max_float: int,
             extra: list[str]) -> tuple[dict, Path]:
    """The converter CLI; returns (report, model file extracted from the bundle)."""
    from converter.cli import main
    from edge_agent.bundle import generate_keypair, read_manifest_unverified

    key, _ = generate_keypair(work / "keys", overwrite=True)
    out = work / f"{fmt}.edgebundle"
    args = ["-q", "convert", str(src), "--profile", "raspberry-pi-4", "--format", fmt, "--precision", "int8-static",
            "--calibration", str(calib), "--eval", str(select), "--key", str(key), "--out", str(out),
            "--accuracy-budget", budget, "--max-float-layers", str(max_float), "--bench-runs", "0", "--force", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0, f"{fmt} conversion failed"
    m = read_manifest_unverified(out)
    with tarfile.open(out) as tar:
        tar.extract(m.model_file, work / f"bundle-{fmt}", filter="data")
    return json.loads(Path(str(out) + ".report.json").read_text()), work / f"bundle-{fmt}" / m.model_file


def _int16x8(saved_model: Path, calib_nhwc: np.ndarray, out: Path) -> Path:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib_nhwc[i:i + 1]] for i in range(len(calib_nhwc)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    with contextlib.redirect_stdout(sys.stderr):
        out.write_bytes(conv.convert())
    return out


def _runner(model: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """One-sample call (NCHW float input) for an ONNX or TFLite file; TFLite gets NHWC."""
    if model.suffix == ".onnx":
        sess = ort_session(model, threads=threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    m = TFLiteModel(model, threads)
    assert m.delegate == "XNNPACK", f"{model.name}: XNNPACK not applied"
    return lambda x: m.run_list([np.ascontiguousarray(x.transpose(0, 2, 3, 1))])[0]


def _outputs(model: Path, x: np.ndarray) -> np.ndarray:
    run = _runner(model, 2)
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def _latencies(models: dict[str, Path], x: np.ndarray, runs: int, slow: tuple[str, ...] = ()) -> dict[str, float]:
    """Median ms: scripts/bench_quant.time_interleaved (alternating blocks, a pause for ORT's spinning
    threads to park); `slow` models (int16x8) are timed alone afterwards with a tenth of the runs."""
    from scripts.bench_quant import time_interleaved

    calls = {k: (lambda run=_runner(m, 2): run(x[:1])) for k, m in models.items() if k not in slow}
    stats = time_interleaved(calls, runs, warmup=3, block=10)
    out = {k: float(v["p50_ms"]) for k, v in stats.items()}
    for k in slow:
        stats = time_interleaved({k: (lambda run=_runner(models[k], 2): run(x[:1]))}, max(3, runs // 10), warmup=1, block=1)
        out[k] = float(stats[k]["p50_ms"])
    return out


def bench(kind: str, runs: int, budget: str, max_float: int, int16: bool) -> dict:
    import onnx

    from converter.onnx.model_io import tensor_specs
    from converter.tflite.onnx2tf import nhwc, onnx_to_tflite
    from converter.onnx.input_shapes import pin_input_shapes

    shape, task, n_cal, n_sel, n_eval = SETUPS[kind]
    work = Path(tempfile.mkdtemp(prefix=f"bench-tfl-{kind}-"))
    calib, select, held = data(kind, n_cal, 1), data(kind, n_sel, 2), data(kind, n_eval, 3)
    np.savez(work / "calib.npz", x=calib)
    np.savez(work / "select.npz", x=select)
    float_model = work / "float.onnx"
    onnx.save(pin_input_shapes(onnx.load(str(ocr.model_path(kind))), shape), str(float_model))

    t0 = time.perf_counter()
    report, mixed_model = _convert(float_model, work, "tflite", work / "calib.npz", work / "select.npz", budget, max_float,
                                   ["--sensitivity-samples", "64" if kind == "cls" else "16"])
    seconds_mixed = round(time.perf_counter() - t0, 1)
    from converter.data import Dataset

    ins, _ = tensor_specs(float_model)
    t0 = time.perf_counter()
    import onnxslim  # what the converter's clean-up pass does first (onnx2tf fails on raw PP-OCR rec)

    slim = work / "float.slim.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(onnxslim.slim(onnx.load(str(float_model))), strict_mode=False), str(slim))
    plain = onnx_to_tflite(slim, work / "plain", "int8-static", ins, Dataset({ins[0].name: calib}), n_cal)
    seconds_plain = round(time.perf_counter() - t0, 1)
    ort_report, ort_model = _convert(float_model, work, "onnx", work / "calib.npz", work / "select.npz", budget, max_float,
                                     ["--calibration-method", "auto" if kind == "cls" else "minmax,percentile:99.999"])
    models = {"ort-float": float_model, "ort-int8": ort_model, "tflite-fp32": plain.float32,
              "tflite-int8": plain.model, "tflite-mixed": mixed_model}
    int16_error = None
    if int16 and plain.saved_model is not None:
        try:
            models["tflite-int16x8"] = _int16x8(plain.saved_model, nhwc(calib[:32]), work / "int16x8.tflite")
        except Exception as exc:  # e.g. "Quantization to 16x8-bit not yet supported for op: 'HARD_SWISH'"
            int16_error = str(exc).strip().splitlines()[-1][:200]
    ref = _outputs(float_model, held)
    lat = _latencies(models, held, runs, slow=("tflite-int16x8",) if "tflite-int16x8" in models else ())
    rows = {}
    for label, model in models.items():
        s = score(ref, _outputs(model, held), task)
        rows[label] = {"agreement": s["agreement"], "metric": s["metric"], "mean_cosine": s["mean_cosine"],
                       **{k: s[k] for k in ("sequence_equal",) if k in s},
                       "latency_ms": round(lat[label], 3), "size_mb": round(model.stat().st_size / 1e6, 3)}
        if model.suffix == ".tflite":
            from edge_agent.runtimes.litert_runtime import TFLiteModel

            rows[label]["xnnpack_partitions"] = TFLiteModel(model, 2).delegate_nodes  # more = more hand-offs
    for r in rows.values():
        r["speedup_vs_ort_float"] = round(rows["ort-float"]["latency_ms"] / r["latency_ms"], 2)
        r["speedup_vs_tflite_fp32"] = round(rows["tflite-fp32"]["latency_ms"] / r["latency_ms"], 2)
    m = report["measurements"]
    mixed = m.get("mixed_precision", {})
    return {"model": kind, "held_out_samples": n_eval, "budget": budget, "tflite_precision": report["precision"],
            "onnx_precision": ort_report["precision"], "float_layers": mixed.get("float_layers", []),
            "mixed_passed": mixed.get("passed"), "mixed_steps": mixed.get("steps"),
            "sensitivity_top": (m.get("sensitivity") or {}).get("ranking", [])[:5],
            "seconds": {"tflite_convert_with_fallback": seconds_mixed, "onnx2tf_plain": seconds_plain},
            "int16x8_error": int16_error, "load_avg": round(os.getloadavg()[0], 2), "results": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cls", help="comma-separated: cls,rec (det: dynamic maps, slow in onnx2tf)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget", default="agreement:0.95")
    ap.add_argument("--max-float-layers", type=int, default=8)
    ap.add_argument("--int16", action="store_true", help="also measure int16 activations (16x8), few runs")
    ap.add_argument("--json", action="store_true")
    add_keep_work(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with run_folder(args.keep_work):
        results = [bench(k, args.runs, args.budget, args.max_float_layers, args.int16) for k in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"\n{r['model']}: {r['held_out_samples']} held-out inputs, budget {r['budget']}; TFLite = {r['tflite_precision']} "
              f"(float layers: {', '.join(r['float_layers']) or 'none'}), ONNX = {r['onnx_precision']}; "
              f"load average {r['load_avg']}")
        if r["int16x8_error"]:
            print(f"  int16x8: {r['int16x8_error']}")
        print(f"  {'variant':<15} {'agreement':>9} {'metric':<26} {'latency ms':>10} {'vs ORT fp32':>11} {'vs TFL fp32':>11} "
              f"{'MB':>7} {'XNNPACK parts':>13}")
        for label, x in r["results"].items():
            print(f"  {label:<15} {x['agreement']:>9.3f} {x['metric']:<26} {x['latency_ms']:>10.3f} "
                  f"{x['speedup_vs_ort_float']:>10.2f}x {x['speedup_vs_tflite_fp32']:>10.2f}x {x['size_mb']:>7.3f} "
                  f"{x.get('xnnpack_partitions', '-'):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
