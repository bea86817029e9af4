"""The edgekit demo: every step is a real CLI call, printed before it runs.

1. train a small CNN on scikit-learn's digits (real 8x8 handwritten digits, ships in the wheel)
2. export calibration/eval data and sample images
3. edge-convert keygen; edge-convert convert ... --profile raspberry-pi-4 (static int8)
4. edge-agent verify / run / bench
5. a short summary: sizes, float vs int8 accuracy, latency percentiles
6. over the air: the fleet server with its web console (URL printed, --no-console to skip), one
   device agent, and a staged update to v2 deployed through the management API
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
OPTIONS: dict = {}  # the command line, for the steps


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
    parser.add_argument("--no-console", action="store_true", help="run the fleet without its web console and API")
    parser.add_argument("--console-port", type=int, default=0, help="console/API port (default: a free one)")
    parser.add_argument("--keep-serving", action="store_true",
                        help="after the demo, keep the fleet, its console and the device running until Ctrl-C")
    args = parser.parse_args()
    OPTIONS.update(vars(args))
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
    sh("edge-convert", "convert", onnx_path, "--profile", args.profile, "--calibration", out / "calib.npz",
       "--eval", out / "eval.npz", "--labels", out / "labels.txt", "--key", out / "keys/signing.key", "--out", bundle)
    report = json.loads(Path(str(bundle) + ".report.json").read_text())

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


def ota_step(out: Path, bundle: Path, home: Path) -> None:
    """Fleet server with its embedded broker and web console; one device agent; a staged update to v2."""
    print("\n== 4. over the air: fleet server (embedded MQTT broker, web console) updates the device to v2 ==")
    fleet_home = out / "fleet"
    if fleet_home.exists():
        import shutil

        shutil.rmtree(fleet_home)
    bundle_v2 = out / "digits-v2.edgebundle"
    sh("edge-convert", "convert", out / "digits.onnx", "--profile", "raspberry-pi-4", "--calibration", out / "calib.npz",
       "--eval", out / "eval.npz", "--labels", out / "labels.txt", "--key", out / "keys/signing.key",
       "--model-version", "2", "--out", bundle_v2)
    trust = out / "keys/signing.pub"
    for b in (bundle, bundle_v2):
        sh("edge-fleet", "publish", b, "--trust", trust, "--home", fleet_home)
    device_home = out / "device-pi-01"
    if device_home.exists():
        import shutil

        shutil.rmtree(device_home)
    sh("edge-agent", "--home", device_home, "install", bundle, "--trust", trust, "--profile", "raspberry-pi-4")
    console = not OPTIONS.get("no_console")
    token = None
    if console:  # an admin token for the console and the API (the secret is printed once, stored hashed)
        token = sh("edge-fleet", "tokens", "create", "demo-admin", "--role", "admin", "--home", fleet_home, "--json",
                   capture_json=True)["token"]
    http = ["--http", str(OPTIONS.get("console_port") or 0)] if console else []
    # the embedded broker requires logins: the device gets its own (read-only desired/blocks topics)
    login = sh("edge-fleet", "devices", "login", "pi-01", "--home", fleet_home, "--json", capture_json=True)
    print(f"\n$ edge-fleet serve --home ... {' '.join(http)}   (background)")
    server = subprocess.Popen([str(BIN / "edge-fleet"), "serve", "--home", str(fleet_home), "--json", *http],
                              stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        info = json.loads(server.stdout.readline())
        print(f"fleet server on {info['broker']} (embedded {info['embedded']})")
        if console:
            print(f"web console  {info['http']}/#token={token}")
            print(f"API          {info['http']}/api/v1/ (OpenAPI: {info['http']}/api/v1/openapi.json)")
        print(f"$ edge-agent serve --broker {info['broker']} --device-id pi-01 --username pi-01 (password in EDGE_AGENT_MQTT_PASSWORD)   "
              "(background)")
        agent_log = open(out / "device-pi-01.log", "w")
        agent = subprocess.Popen([str(BIN / "edge-agent"), "--home", str(device_home), "serve", "--broker", info["broker"],
                                  "--device-id", "pi-01", "--username", login["username"], "--trust", str(trust), "--profile", "raspberry-pi-4",
                                  "--telemetry-interval", "1"], stdout=agent_log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "EDGE_AGENT_MQTT_PASSWORD": login["password"]})
        _wait_for_device(fleet_home)
        # with the console on, the deploy goes through the management API, as a CI pipeline's would
        remote = ["--api", info["http"], "--token", token] if console else ["--home", fleet_home]
        sh("edge-fleet", *remote, "deploy", "digits:2", "--devices", "pi-01", "--wait", "--wait-timeout", "120")
        time.sleep(1.5)  # one telemetry period, so status shows the new model's latency
        sh("edge-fleet", *remote, "status")
        sh("edge-agent", "--home", device_home, "status")
        if console and OPTIONS.get("keep_serving"):
            print(f"\nconsole: {info['http']}/#token={token}   (Ctrl-C to stop)", flush=True)
            server.wait()
        elif console:
            print(f"\n(the console closes with the demo; run `scripts/demo.sh --keep-serving` to keep it open)")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (agent, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _wait_for_device(fleet_home: Path) -> None:
    """Until pi-01 reported v1 and is online (read from the registry by the local CLI)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = subprocess.run([str(BIN / "edge-fleet"), "status", "--home", str(fleet_home), "--json"],
                                stdout=subprocess.PIPE, text=True)
        devices = json.loads(status.stdout or "{}").get("devices", [])
        if any(d["id"] == "pi-01" and d["version"] == 1 and d["presence"] == "online" for d in devices):
            return
        time.sleep(0.5)


def video_step(out: Path, bundle: Path, home: Path) -> None:
    """A short video of real digits through the camera pipeline (decode, preprocess, infer in stages)."""
    try:
        import cv2
    except ImportError:
        print("\n(video step skipped: install edgekit[camera] for OpenCV)")
        return
    import numpy as np

    from examples import digits_cnn

    print("\n== 5. video: per-frame inference through the pipeline ==")
    _, _, x_test, y_test = digits_cnn.load_split()
    video = out / "digits.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (128, 128))
    for img in x_test[:90]:
        frame = cv2.resize(np.clip(img[0] * 255, 0, 255).astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    results = out / "video-results.jsonl"
    sh("edge-agent", "--home", home, "run", bundle, "--source", video, "--output", results)
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    frames = [r for r in records if "label" in r]
    correct = sum(int(r["label"]) == int(y) for r, y in zip(frames, y_test[:90]))
    print(f"video: {len(frames)} frames classified, {correct}/{len(frames)} match the true digit")


# Later parts of the story append steps here: step(out, bundle, home).
EXTRA_STEPS: list = [ota_step, video_step]

if __name__ == "__main__":
    sys.exit(main())
