"""Benchmark: the profile's int8 recipe vs fp32 vs the obvious alternatives, side by side in one run.

A MobileNetV2-shaped network (plain torch, 224x224, random weights) is converted by edge-convert
for raspberry-pi-4 twice (fp32, and the profile's static int8 recipe), then timed under the agent
on this machine with the same thread count. Also timed: ONNX Runtime's quantize_dynamic and
quantize_static with their defaults on the same float graph, and a bare
onnxruntime.InferenceSession.run loop on the int8 file to measure the agent's overhead.

    python scripts/bench_quant.py [--runs 100] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.options import ConvertOptions  # noqa: E402
from converter.pipeline import convert  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from edge_agent.telemetry.latency import summarize_ms  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def calibration_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random 'images' normalised like ImageNet inputs (speed benchmark: content does not matter)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 1, size=(n, 3, 14, 14)).astype(np.float32)
    img = low.repeat(16, axis=2).repeat(16, axis=3)  # blocky 224x224
    img += rng.normal(0, 0.05, size=img.shape).astype(np.float32)
    return ((np.clip(img, 0, 1) - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(np.float32)


def bundle_for(work: Path, key: Path, precision: str | None) -> tuple[Path, dict]:
    out = work / f"mnv2-{precision or 'profile'}.edgebundle"
    t0 = time.perf_counter()
    result = convert(ConvertOptions(
        source=f"{REPO / 'examples/mobilenet_v2.py'}:build", profile="raspberry-pi-4",
        out=out, key=key, calibration=work / "calib.npz", evaluation=work / "eval.npz", precision=precision,
        max_accuracy_drop=100.0, min_agreement=0.0, min_cosine=-1.0, bench_runs=0,
        pass_options={"input_shape": [1, 3, 224, 224], "mean": MEAN, "std": STD},
    ))
    return out, {"seconds": round(time.perf_counter() - t0, 2), "accuracy": result.measurements.get("accuracy", {})}


def time_interleaved(runners: dict[str, callable], runs: int, warmup: int, block: int = 20) -> dict[str, dict]:
    """Time every runner in alternating blocks so machine noise hits all of them alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(max(1, runs // block)):
        for name, fn in runners.items():
            time.sleep(0.2)  # let the previous session's spinning ORT threads park (they would steal the cores)
            fn()  # untimed
            for _ in range(block):
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    return {k: summarize_ms(v) for k, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        calib = calibration_images(64)
        np.savez(work / "calib.npz", input=calib)
        np.savez(work / "eval.npz", input=calibration_images(32, seed=1))
        trust = TrustStore.from_paths([pub])

        print("converting fp32 and int8 bundles for raspberry-pi-4 ...", file=sys.stderr)
        fp32_bundle, fp32_conv = bundle_for(work, key, "fp32")
        int8_bundle, int8_conv = bundle_for(work, key, None)
        sessions, files = {}, {}
        for name, b in (("fp32 (agent)", fp32_bundle), ("int8 recipe (agent)", int8_bundle)):
            vb = verify_bundle(b, trust, unpack_to=work / name.split()[0])
            sessions[name] = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
            files[name] = vb.unpacked_to / vb.manifest.model_file
        float_onnx = files["fp32 (agent)"]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib[i : i + 1] for i in range(len(calib)))

            def get_next(self):
                x = next(self.it, None)
                return None if x is None else {"input": x}

        print("quantize_dynamic / quantize_static with defaults ...", file=sys.stderr)
        t0 = time.perf_counter()
        quantize_dynamic(str(float_onnx), str(work / "dyn.onnx"))
        dyn_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize_static(str(float_onnx), str(work / "static_default.onnx"), Reader())
        static_s = time.perf_counter() - t0

        def bare(path: Path):
            o = ort.SessionOptions()
            o.intra_op_num_threads, o.inter_op_num_threads = args.threads, 1
            o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            o.log_severity_level = 3
            return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])

        x = {"input": calibration_images(1, seed=7)}
        bare_int8 = bare(files["int8 recipe (agent)"])
        others = {"quantize_dynamic defaults": bare(work / "dyn.onnx"),
                  "quantize_static defaults": bare(work / "static_default.onnx")}
        runners = {name: (lambda s=s: s.run(x)) for name, s in sessions.items()}
        runners["int8 recipe (bare ORT loop)"] = lambda: bare_int8.run(None, x)
        for name, s in others.items():
            runners[name] = lambda s=s: s.run(None, x)
        print(f"timing {len(runners)} variants, {args.runs} runs each, {args.threads} threads, interleaved ...", file=sys.stderr)
        stats = time_interleaved(runners, args.runs, args.warmup)

        ref = sessions["fp32 (agent)"].run(x)[0]
        sizes = {"fp32 (agent)": files["fp32 (agent)"].stat().st_size,
                 "int8 recipe (agent)": files["int8 recipe (agent)"].stat().st_size,
                 "int8 recipe (bare ORT loop)": files["int8 recipe (agent)"].stat().st_size,
                 "quantize_dynamic defaults": (work / "dyn.onnx").stat().st_size,
                 "quantize_static defaults": (work / "static_default.onnx").stat().st_size}
        base = stats["fp32 (agent)"]["mean_ms"]
        rows = []
        for name in runners:
            rows.append({"variant": name, "mean_ms": stats[name]["mean_ms"], "p50_ms": stats[name]["p50_ms"],
                         "p90_ms": stats[name]["p90_ms"], "speedup_vs_fp32": round(base / stats[name]["mean_ms"], 3),
                         "size_mb": round(sizes[name] / 1e6, 3), "size_vs_fp32": round(sizes[name] / sizes["fp32 (agent)"], 3)})
        agent, bare_ = stats["int8 recipe (agent)"]["mean_ms"], stats["int8 recipe (bare ORT loop)"]["mean_ms"]
        summary = {
            "threads": args.threads, "runs": args.runs, "rows": rows,
            "int8_speedup_vs_fp32": round(base / agent, 3),
            "int8_size_ratio": round(sizes["int8 recipe (agent)"] / sizes["fp32 (agent)"], 3),
            "agent_overhead_pct": round(100 * (agent - bare_) / bare_, 2),
            "conversion_seconds": {"fp32": fp32_conv["seconds"], "int8": int8_conv["seconds"],
                                   "quantize_dynamic": round(dyn_s, 2), "quantize_static": round(static_s, 2)},
            "int8_vs_fp32_cosine": int8_conv["accuracy"].get("mean_cosine"),
            "fp32_output_sample": float(ref.ravel()[0]),
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"\nMobileNetV2-shaped net, 1x3x224x224, {args.threads} threads, {args.runs} runs (interleaved blocks)")
    print(f"{'variant':<30} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'x fp32':>7} {'MB':>7} {'size/fp32':>9}")
    for r in rows:
        print(f"{r['variant']:<30} {r['mean_ms']:>9.3f} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['speedup_vs_fp32']:>7.2f} "
              f"{r['size_mb']:>7.2f} {r['size_vs_fp32']:>9.3f}")
    print(f"\nint8 recipe vs fp32: {summary['int8_speedup_vs_fp32']:.2f}x faster, {summary['int8_size_ratio']:.2f}x the size "
          f"(targets: >= 1.5x, <= 0.3x); output cosine vs fp32 {summary['int8_vs_fp32_cosine']}")
    print(f"agent overhead vs bare InferenceSession.run loop: {summary['agent_overhead_pct']:+.2f}% (target <= 3%)")
    print(f"conversion time: {summary['conversion_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
