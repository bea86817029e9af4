"""The edgekit demo: every step is a real CLI call, printed before it runs.

1. train a small CNN on scikit-learn's digits (real 8x8 handwritten digits, ships in the wheel)
2. export calibration/eval data and sample images
3. edge-convert keygen; edge-convert convert ... --profile raspberry-pi-4 (static int8)
4. edge-agent verify / run / bench
5. a short summary: sizes, float vs int8 accuracy, latency percentiles
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def sh(*args: str, capture_json: bool = False):
    """Run one CLI command, echo it, fail the demo if it fails."""
    shown = " ".join(shlex.quote(str(a)) for a in args)
    print(f"\n$ {shown}", flush=True)
    cmd = [str(BIN / args[0]), *map(str, args[1:])]
    if capture_json:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"demo: step failed ({proc.returncode}): {shown}")
        data = json.loads(proc.stdout)
        return data
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        sys.exit(f"demo: step failed ({proc.returncode}): {shown}")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the edgekit story end to end (train, convert, verify, run, bench).")
    parser.add_argument("--out", type=Path, default=REPO / "demo-out", help="working folder (default demo-out/)")
    parser.add_argument("--profile", default="raspberry-pi-4")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    from examples import digits_cnn

    print("== 1. train a CNN on real handwritten digits (scikit-learn digits, 8x8) ==")
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    model = digits_cnn.train(x_train, y_train)
    print(f"trained in {time.perf_counter() - t0:.1f}s; float test accuracy {digits_cnn.accuracy(model, x_test, y_test):.2%}")
    onnx_path = digits_cnn.export_onnx(model, out / "digits.onnx")
    digits_cnn.save_data(out / "calib.npz", x_train[:256])
    digits_cnn.save_data(out / "eval.npz", x_test, y_test)
    (out / "labels.txt").write_text("\n".join(digits_cnn.LABELS) + "\n")
    samples = digits_cnn.save_pngs(out / "samples", x_test[:5])
    print(f"exported {onnx_path.name}, calib.npz (256), eval.npz ({len(y_test)} labelled), 5 sample PNGs")

    print("\n== 2. convert for", args.profile, "==")
    sh("edge-convert", "keygen", "--out", out / "keys", "--force")
    bundle = out / "digits.edgebundle"
    report = sh("edge-convert", "convert", onnx_path, "--profile", args.profile, "--calibration", out / "calib.npz",
                "--eval", out / "eval.npz", "--labels", out / "labels.txt", "--key", out / "keys/signing.key",
                "--out", bundle, "--json", capture_json=True)

    print("\n== 3. on the device: verify, run, bench ==")
    home = out / "agent-home"
    sh("edge-agent", "--home", home, "trust", "add", out / "keys/signing.pub")
    sh("edge-agent", "--home", home, "verify", bundle, "--profile", args.profile)
    sh("edge-agent", "--home", home, "run", bundle, *samples, "--top-k", "3")
    bench = sh("edge-agent", "--home", home, "bench", bundle, "--runs", "200", "--warmup", "20", "--json", capture_json=True)

    m = report["measurements"]
    acc, sizes, lat = m["accuracy"], m["sizes"], bench["latency"]
    print("\n== summary ==")
    print(f"bundle       {bundle} ({bundle.stat().st_size / 1e3:.1f} kB, {report['precision']}, signed)")
    print(f"model size   float {sizes['float_model_bytes'] / 1e3:.1f} kB -> int8 {sizes['model_bytes'] / 1e3:.1f} kB ({sizes['size_ratio']:.2f}x)")
    print(f"accuracy     float {acc['float_top1_accuracy']:.2%} -> int8 {acc['converted_top1_accuracy']:.2%} "
          f"(agreement {acc['top1_agreement']:.2%}, {acc['samples']} held-out digits)")
    print(f"latency      p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
          f"({bench['throughput_per_s']:.0f}/s on {bench['provider']})")
    for step in EXTRA_STEPS:
        step(out, bundle, home)
    return 0


# Later parts of the story (OTA to a fleet, video) append steps here: step(out, bundle, home).
EXTRA_STEPS: list = []

if __name__ == "__main__":
    sys.exit(main())
