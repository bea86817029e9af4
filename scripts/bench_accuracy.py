#!/usr/bin/env python3
"""Float vs ORT-default int8 vs edgekit's accuracy-aware int8 on real PP-OCR models (RapidOCR wheel),
calibrated and evaluated on real text images / photos from scikit-image (held-out eval set).

  PYTHONPATH=. python scripts/bench_accuracy.py [--models cls,det,rec] [--json]

Agreement with float: cls top-1; det share of maps with IoU>=0.9 (threshold 0.3); rec per-timestep
argmax (and whole-sequence equality). Latency: median ms, batch 1, 2 threads, all in this run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.accuracy.metrics import score  # noqa: E402
from converter.onnx.int8_arithmetic import exact_int8_for  # noqa: E402
from converter.onnx.model_io import ort_session  # noqa: E402
from examples import ocr_samples as ocr  # noqa: E402
from bench_scratch import add_keep_work, run_folder  # noqa: E402

FAST_METHODS = "minmax,percentile:99.99,percentile:99.999"  # det/rec: histogram calibrators cost minutes there
SETUPS = {  # kind: (input shape, task, calib n, select n, held-out n)
    "cls": ([1, 3, 48, 192], "classification", 128, 200, 200),
    "det": ([1, 3, 320, 320], "map", 48, 48, 48),
    "rec": ([1, 3, 48, 320], "sequence", 64, 64, 64),
}


def data(kind: str, n: int, seed: int) -> np.ndarray:
    shape = SETUPS[kind][0][1:]
    if kind == "det":
        return ocr.scene_crops(n, (shape[1], shape[2]), seed)
    return ocr.line_crops(n, tuple(shape), seed, rotate_half=(kind == "cls"))[0]


def run(model: Path, x: np.ndarray) -> np.ndarray:
    """Outputs on the Pi's int8 arithmetic (exact; not this host's kernels where they saturate, see
    converter.onnx.int8_arithmetic); latencies below use the host's fused kernels."""
    sess = ort_session(model, exact_int8=exact_int8_for("aarch64"))
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def latencies(models: dict[str, Path], x: np.ndarray, runs: int) -> dict[str, float]:
    """Median ms per model, batch 1, 2 threads; runs interleaved (A B C A B C ...) so load spikes hit all alike."""
    import time

    sessions = {k: ort_session(m, threads=2) for k, m in models.items()}
    feeds = {k: {s.get_inputs()[0].name: x[:1]} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    ms: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            ms[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in ms.items()}


def default_int8(float_model: Path, calib: np.ndarray, out: Path) -> Path:
    """quantize_static with its defaults (QDQ, MinMax, per-tensor, int8/int8) after quant_pre_process."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from converter.onnx.qdq_quantizer import prepare_for_qdq

    prep = out.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(float_model), str(prep))
    except Exception:
        prep = float_model
    prep, _ = prepare_for_qdq(prep, out.with_suffix(".ready.onnx"))
    import onnx

    name = onnx.load(str(prep), load_external_data=False).graph.input[0].name  # "x" for ours, "images" for YOLO

    class Reader:
        def __init__(self):
            self.it = iter(range(len(calib)))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {name: calib[i : i + 1]}

    quantize_static(str(prep), str(out), Reader())
    return out


def ours(kind: str, src: Path, calib: Path, select: Path, work: Path, budget: str, max_float: int,
         methods: str, candidates: int) -> tuple[dict, Path]:
    """The converter CLI's recipe; returns (float model, int8 model, report)."""
    from converter.cli import main
    from edge_agent.bundle import generate_keypair

    key, _ = generate_keypair(work / "keys", overwrite=True)
    out = work / f"{kind}.edgebundle"
    shape = "x".join(map(str, SETUPS[kind][0]))
    args = ["-q", "convert", str(src), "--input-shape", shape, "--profile", "raspberry-pi-4", "--calibration", str(calib),
            "--eval", str(select), "--key", str(key), "--out", str(out), "--calibration-method", methods,
            "--accuracy-budget", budget, "--max-float-layers", str(max_float), "--bench-runs", "0", "--force",
            "--sensitivity-candidates", str(candidates)]
    if kind != "cls":
        args += ["--sensitivity-samples", "16"]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # keep --json output clean
        assert main(args) == 0, "conversion failed"
    with tarfile.open(out) as tar:
        tar.extract("model/model.onnx", work / "bundle", filter="data")
    report = json.loads(Path(str(out) + ".report.json").read_text())
    return report, work / "bundle" / "model" / "model.onnx"


def bench(kind: str, runs: int, budget: str, max_float: int, methods: str, candidates: int) -> dict:
    shape, task, n_cal, n_sel, n_eval = SETUPS[kind]
    work = Path(tempfile.mkdtemp(prefix=f"bench-acc-{kind}-"))
    calib, select, held = data(kind, n_cal, 1), data(kind, n_sel, 2), data(kind, n_eval, 3)
    np.savez(work / "calib.npz", x=calib)
    np.savez(work / "select.npz", x=select)
    t0 = time.perf_counter()
    report, ours_model = ours(kind, ocr.model_path(kind), work / "calib.npz", work / "select.npz", work, budget, max_float,
                              methods if kind == "cls" or methods != "auto" else FAST_METHODS, candidates)
    convert_s = time.perf_counter() - t0
    # the float reference is the converter's pinned, cleaned float graph's source: re-pin it here
    import onnx

    from converter.onnx.input_shapes import pin_input_shapes

    float_model = work / "float.onnx"
    onnx.save(pin_input_shapes(onnx.load(str(ocr.model_path(kind))), shape), str(float_model))
    default_model = default_int8(float_model, calib, work / "default.int8.onnx")
    ref = run(float_model, held)
    rows = {}
    models = {"float": float_model, "ort-default-int8": default_model, "edgekit-int8": ours_model}
    lat = latencies(models, held, runs)
    for label, model in models.items():
        s = score(ref, run(model, held), task)
        rows[label] = {"agreement": s["agreement"], "metric": s["metric"], "mean_cosine": s["mean_cosine"],
                       **{k: s[k] for k in ("mean_iou", "sequence_equal", "clear_agreement", "clear_share") if k in s},
                       "latency_ms": round(lat[label], 3), "size_mb": round(model.stat().st_size / 1e6, 3)}
    for r in rows.values():
        r["speedup_vs_float"] = round(rows["float"]["latency_ms"] / r["latency_ms"], 2)
    m = report["measurements"]
    mixed = m.get("mixed_precision", {})
    return {"model": kind, "held_out_samples": n_eval, "precision": report["precision"], "convert_seconds": round(convert_s, 1),
            "load_avg": round(os.getloadavg()[0], 2),
            "calibration": m.get("calibration_search", {}).get("chosen"),
            "float_layers": mixed.get("float_layers", []), "mixed_steps": mixed.get("steps"), "results": rows}


def _detail(row: dict) -> str:
    if "clear_agreement" in row:
        return f"{row['clear_agreement']:.3f} where float's answer is clear ({row['clear_share']:.0%} of inputs)"
    if "mean_iou" in row:
        return f"mean IoU {row['mean_iou']:.3f}"
    return f"whole sequence equal {row['sequence_equal']:.3f}" if "sequence_equal" in row else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cls,det,rec")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget", default="agreement:0.95")
    ap.add_argument("--max-float-layers", type=int, default=8)
    ap.add_argument("--methods", default="auto", help="--calibration-method for ours (auto: all for cls, "
                    f"{FAST_METHODS} for det/rec)")
    ap.add_argument("--candidates", type=int, default=16, help="--sensitivity-candidates (layers measured by exclusion)")
    ap.add_argument("--json", action="store_true")
    add_keep_work(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with run_folder(args.keep_work):
        results = [bench(k, args.runs, args.budget, args.max_float_layers, args.methods, args.candidates) for k in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"\n{r['model']}: {r['held_out_samples']} held-out inputs, ours = {r['precision']} "
              f"(calibration {r['calibration']}, float layers: {', '.join(r['float_layers']) or 'none'}; "
              f"converted in {r['convert_seconds']} s, load average {r['load_avg']})")
        print(f"  {'variant':<18} {'agreement':>9} {'metric':<26} {'latency ms':>10} {'speedup':>8} {'MB':>7}  detail")
        for label, x in r["results"].items():
            print(f"  {label:<18} {x['agreement']:>9.3f} {x['metric']:<26} {x['latency_ms']:>10.3f} "
                  f"{x['speedup_vs_float']:>7.2f}x {x['size_mb']:>7.3f}  {_detail(x)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
