#!/usr/bin/env python3
"""Float vs post-training int8 (edge-convert's recipe) vs QAT int8 (converter.qat) on the digits CNN.

  PYTHONPATH=. python scripts/bench_qat.py [--qat-epochs 3] [--runs 200] [--json]

Held-out accuracy, top-1 agreement with the float model, ORT latency (median ms, batch 1, one thread, the
three models timed interleaved in this run) and model size. Both int8 models are the converted bundles' models.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.cli import main as convert  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from examples import digits_cnn  # noqa: E402
from examples.qat_digits import qat_digits  # noqa: E402


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(s, x: np.ndarray) -> np.ndarray:
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).argmax(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-qat-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        r = qat_digits(out, qat_epochs=args.qat_epochs)
        train_s = time.perf_counter() - t0
        key, pub = generate_keypair(out / "keys")
        float_onnx = digits_cnn.export_onnx(r["float_model"], out / "digits.onnx")
        common = ["--eval", str(r["eval"]), "--key", str(key), "--bench-runs", "5"]
        assert convert(["--quiet", "convert", str(float_onnx), "--profile", "raspberry-pi-4", "--calibration", str(r["calibration"]),
                        "--out", str(out / "ptq.edgebundle"), *common]) == 0
        assert convert(["--quiet", "convert", str(r["onnx"]), "--profile", "raspberry-pi-4", "--out", str(out / "qat.edgebundle"),
                        *common]) == 0
        models = {"float": float_onnx}
        for name in ("ptq", "qat"):
            vb = verify_bundle(out / f"{name}.edgebundle", TrustStore.from_paths([pub]), unpack_to=out / name)
            models[name] = out / name / vb.manifest.model_file
            models[name + "_precision"] = vb.manifest.precision
        x, y = r["x_test"], r["y_test"]
        sessions = {k: session(models[k]) for k in ("float", "ptq", "qat")}
        preds = {k: predict(s, x) for k, s in sessions.items()}
        times = {k: [] for k in sessions}
        one = x[:1]
        for _ in range(args.runs):  # interleaved: load changes hit all three alike
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: one})
                times[k].append((time.perf_counter() - t) * 1e3)
        rows = {}
        for k in sessions:
            rows[k] = {"precision": models.get(k + "_precision", "fp32"), "accuracy": round(float((preds[k] == y).mean()), 4),
                       "agreement_with_float": round(float((preds[k] == preds["float"]).mean()), 4),
                       "latency_ms": round(float(np.median(times[k])), 4),
                       "speedup_vs_float": round(float(np.median(times["float"]) / np.median(times[k])), 2),
                       "bytes": models[k].stat().st_size}
        result = {"samples": int(len(x)), "qat_epochs": args.qat_epochs, "train_and_qat_seconds": round(train_s, 1),
                  "torch_fake_quant_accuracy": round(r["qat_accuracy"], 4), "models": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"digits CNN, {result['samples']} held-out samples, {args.qat_epochs} QAT epochs "
              f"(float training + QAT {result['train_and_qat_seconds']} s); torch fake-quant accuracy "
              f"{result['torch_fake_quant_accuracy']}")
        print(f"{'model':6} {'precision':11} {'accuracy':>8} {'agree':>6} {'ms':>7} {'vs float':>8} {'bytes':>7}")
        for k, m in rows.items():
            print(f"{k:6} {m['precision']:11} {m['accuracy']:8.4f} {m['agreement_with_float']:6.3f} {m['latency_ms']:7.4f} "
                  f"{m['speedup_vs_float']:7.2f}x {m['bytes']:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
