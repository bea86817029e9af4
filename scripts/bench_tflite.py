"""Benchmark: TFLite fp32 vs TFLite full int8 vs ONNX int8 (and `--format auto`), side by side in one run.

A MobileNetV2-shaped network (examples/mobilenet_v2.py: plain torch, 224x224, random weights) is
converted by edge-convert for raspberry-pi-4 into:
  - TFLite fp32            (onnx2tf)
  - TFLite full int8       (onnx2tf, calibrated on the calibration images, float I/O)
  - ONNX int8              (the profile's recipe: static QDQ, per-channel, uint8 activations / int8 weights)
  - --format auto          (builds TFLite and ONNX int8, gates and times them, packs the fastest)
Each bundle is verified and loaded by the agent, then all are timed interleaved in blocks with
the same thread count, so machine noise hits them alike. Printed: latency, size ratios, the
time each conversion took, and whether auto's pick is within 5 % of the fastest passing candidate.
The auto bundle holds the same model file as one of the candidate bundles (checked by SHA-256);
its latency is that bundle's, measured in the same interleaved run (a second session of the same
ONNX model in one process would compete for the same cores and distort both).

    python scripts/bench_tflite.py [--runs 100] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.options import ConvertOptions  # noqa: E402
from converter.pipeline import convert  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant import MEAN, STD, calibration_images, time_interleaved  # noqa: E402  - one timing method for all benches

TARGET_SPEEDUP, TARGET_SIZE, AUTO_TOLERANCE = 1.5, 0.3, 0.05


def build(work: Path, key: Path, name: str, fmt: str, precision: str | None) -> tuple[Path, dict]:
    out = work / f"mnv2-{name}.edgebundle"
    t0 = time.perf_counter()
    result = convert(ConvertOptions(
        source=f"{REPO / 'examples/mobilenet_v2.py'}:build", profile="raspberry-pi-4",
        out=out, key=key, calibration=work / "calib.npz", evaluation=work / "eval.npz", precision=precision,
        max_accuracy_drop=100.0, min_agreement=0.0, min_cosine=-1.0, bench_runs=20, calibration_samples=64,
        pass_options={"input_shape": [1, 3, 224, 224], "mean": MEAN, "std": STD},
    ), fmt=fmt)
    return out, {"seconds": round(time.perf_counter() - t0, 2), "format": result.format, "precision": result.precision,
                 "measurements": result.measurements}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tflite-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        np.savez(work / "calib.npz", input=calibration_images(64))
        np.savez(work / "eval.npz", input=calibration_images(32, seed=1))
        trust = TrustStore.from_paths([pub])
        plan = [("tflite-fp32", "tflite", "fp32"), ("tflite-int8", "tflite", "int8-static"),
                ("onnx-int8", "onnx", None), ("auto", "auto", None)]
        bundles, conv = {}, {}
        for name, fmt, precision in plan:
            print(f"converting {name} ...", file=sys.stderr)
            bundles[name], conv[name] = build(work, key, name, fmt, precision)
        sessions, sizes, digests = {}, {}, {}
        for name, b in bundles.items():
            vb = verify_bundle(b, trust, unpack_to=work / f"u-{name}")
            sizes[name] = (vb.unpacked_to / vb.manifest.model_file).stat().st_size
            digests[name] = vb.manifest.file_entry(vb.manifest.model_file).sha256
            if name != "auto":
                sessions[name] = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        same_as = next((n for n in sessions if digests[n] == digests["auto"]), None)
        identical = same_as is not None
        if same_as is None:  # same format and precision, bytes differ (e.g. onnx node naming)
            same_as = next((n for n in sessions if (conv[n]["format"], conv[n]["precision"])
                            == (conv["auto"]["format"], conv["auto"]["precision"])), None)
        x = calibration_images(1, seed=7)
        runners = {name: (lambda s=s: s.run({s.manifest.inputs[0].name: x if s.manifest.inputs[0].layout == "NCHW"
                                              else np.ascontiguousarray(x.transpose(0, 2, 3, 1))}))
                   for name, s in sessions.items()}
        print(f"timing {len(runners)} bundles, {args.runs} runs each, {args.threads} threads, interleaved ...", file=sys.stderr)
        stats = time_interleaved(runners, args.runs, args.warmup)
        infos = {n: s.info for n, s in sessions.items()}

    if same_as is None:
        print("auto's bundle matches none of the candidate bundles", file=sys.stderr)
        return 1
    stats["auto"], infos["auto"] = stats[same_as], infos[same_as]
    base = stats["tflite-fp32"]["mean_ms"]
    rows = [{"bundle": n, "format": conv[n]["format"], "precision": conv[n]["precision"],
             "runtime": f"{infos[n].runtime} {infos[n].version} ({infos[n].details.get('interpreter', infos[n].provider)}"
                        f"{', ' + infos[n].provider if infos[n].runtime == 'litert' else ''})",
             "mean_ms": stats[n]["mean_ms"], "p50_ms": stats[n]["p50_ms"], "p90_ms": stats[n]["p90_ms"],
             "speedup_vs_tflite_fp32": round(base / stats[n]["mean_ms"], 3), "size_mb": round(sizes[n] / 1e6, 3),
             "size_vs_tflite_fp32": round(sizes[n] / sizes["tflite-fp32"], 3), "convert_seconds": conv[n]["seconds"],
             "cosine_vs_float": conv[n]["measurements"].get("accuracy", {}).get("mean_cosine")} for n in bundles]
    cands = conv["auto"]["measurements"].get("candidates", [])
    passing = {c["format"] for c in cands if c.get("passed")}
    name_of = {"tflite": "tflite-int8", "onnx": "onnx-int8"}
    fastest_passing = min(stats[name_of[f]]["p50_ms"] for f in passing)
    auto_ratio = stats["auto"]["p50_ms"] / fastest_passing
    auto_ratio_mean = stats["auto"]["mean_ms"] / min(stats[name_of[f]]["mean_ms"] for f in passing)
    summary = {
        "threads": args.threads, "runs": args.runs, "rows": rows,
        "tflite_int8_speedup_vs_fp32": round(base / stats["tflite-int8"]["mean_ms"], 3),
        "tflite_int8_size_ratio": round(sizes["tflite-int8"] / sizes["tflite-fp32"], 3),
        "onnx_int8_vs_tflite_int8": round(stats["onnx-int8"]["mean_ms"] / stats["tflite-int8"]["mean_ms"], 3),
        "auto": {"chosen": conv["auto"]["format"], "same_model_as": same_as, "byte_identical": identical, "candidates": cands, "p50_vs_fastest_passing": round(auto_ratio, 3),
                 "mean_vs_fastest_passing": round(auto_ratio_mean, 3),
                 "within_5_percent": auto_ratio <= 1 + AUTO_TOLERANCE},
        "conversion_seconds": {n: conv[n]["seconds"] for n in bundles},
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"\nMobileNetV2-shaped net, 1x3x224x224, {args.threads} threads, {args.runs} runs (interleaved blocks)")
    print(f"{'bundle':<12} {'runtime':<40} {'mean ms':>8} {'p50 ms':>8} {'x fp32':>7} {'MB':>6} {'size/fp32':>9} {'convert s':>9}")
    for r in rows:
        print(f"{r['bundle']:<12} {r['runtime']:<40} {r['mean_ms']:>8.3f} {r['p50_ms']:>8.3f} {r['speedup_vs_tflite_fp32']:>7.2f} "
              f"{r['size_mb']:>6.2f} {r['size_vs_tflite_fp32']:>9.3f} {r['convert_seconds']:>9.1f}")
    ok_speed = summary["tflite_int8_speedup_vs_fp32"] >= TARGET_SPEEDUP
    ok_size = summary["tflite_int8_size_ratio"] <= TARGET_SIZE
    print(f"\nTFLite full int8 vs TFLite fp32: {summary['tflite_int8_speedup_vs_fp32']:.2f}x faster "
          f"[{'ok' if ok_speed else 'MISSED'} >= {TARGET_SPEEDUP}x], {summary['tflite_int8_size_ratio']:.3f}x the size "
          f"[{'ok' if ok_size else 'MISSED'} <= {TARGET_SIZE}x]")
    print(f"ONNX int8 latency / TFLite int8 latency: {summary['onnx_int8_vs_tflite_int8']:.2f}")
    print(f"--format auto chose {summary['auto']['chosen']}: p50 {auto_ratio:.3f}x, mean {auto_ratio_mean:.3f}x the fastest passing candidate "
          f"[{'ok' if summary['auto']['within_5_percent'] else 'MISSED'} within 5%]")
    for c in cands:
        lat = c.get("host_latency", {})
        print(f"  candidate {c['format']:<6} {c['precision']:<12} passed={c['passed']} p50 {lat.get('p50_ms', float('nan')):.3f} ms"
              f" (auto's own measurement)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
