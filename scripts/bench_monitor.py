"""Benchmark: what drift statistics cost per frame, against the camera pipeline's own frame time.

Side by side in one run, on a 640x480 video panning over scikit-learn's two sample photos (real
images, shipped in the wheel), for two models:

  mobilenetv2-224  the MobileNetV2-shaped CNN of bench_pipeline.py (fp32, 3x224x224, 1000 classes)
  digits-8x8       the digits CNN (random weights; speed does not depend on them), GRAY 8x8, 10 classes

Per frame it times the pipeline's work (decode -> preprocess -> inference -> postprocess, what the
agent's live feed does; wall clock) and then the CPU time of handing the answered frame to the drift
monitor the way the live feed does (a pipeline.observe.LiveSample through Observers.notify into
DriftMonitor.observe; this thread's CPU time, so other processes on a shared machine do not inflate
it), and prints both with their ratio (target < 5 %). The reference statistics come from the first
frames, as the converter would record them.

Served requests (on by default; `--no-served` skips them): 3 x `--frames` of the same frames sent by tritonclient (binary tensors) to
the serving endpoint (edge_agent.serving, in this process); per request, the client's wall time and
the CPU time the drift observer takes on the request's thread (where it runs, before the answer goes
back). Both go through the agent's CPU budget (edge_agent.monitor.budget: at most 2 % of a core), as
`edge-agent serve` does; `observed`/`not_sampled` say how many inputs it took. Usage:

    PYTHONPATH=. python scripts/bench_monitor.py [--frames 200] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import build_bundle  # noqa: E402
from edge_agent.bundle import (Manifest, Postprocess, Preprocess, TensorSpec, TrustStore, generate_keypair,  # noqa: E402
                               load_private_key, verify_bundle, write_bundle)
from edge_agent.monitor.budget import CpuBudget  # noqa: E402
from edge_agent.monitor.drift import DriftConfig  # noqa: E402
from edge_agent.monitor.reference import reference_stats  # noqa: E402
from edge_agent.monitor.watch import drift_monitor_for  # noqa: E402
from edge_agent.pipeline.observe import LiveSample, Observers  # noqa: E402
from edge_agent.pipeline.sources import open_source  # noqa: E402
from edge_agent.pipeline.stages import FrameInput, Postprocessor, Preprocessor  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from examples import digits_cnn  # noqa: E402


def photo_video(path: Path, n: int) -> Path:
    """640x480 MJPG frames panning across the two sample photos (china.jpg, flower.jpg)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # 427x640 each
    strip = np.concatenate([cv2.resize(p, (720, 480)) for p in photos], axis=1)[:, :, ::-1]  # BGR, 480x1440
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for i in range(n):
        x = (i * 7) % (strip.shape[1] - 640)
        writer.write(np.ascontiguousarray(strip[:, x:x + 640]))
    writer.release()
    return path


def digits_bundle(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    onnx_path = digits_cnn.export_onnx(digits_cnn.build().eval(), folder / "digits.onnx")
    key, pub = generate_keypair(folder / "digits-keys")
    manifest = Manifest(
        name="digits", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime", precision="fp32",
        model_file="model/model.onnx", inputs=[TensorSpec("image", "float32", [1, 1, 8, 8], "NCHW")],
        outputs=[TensorSpec("logits", "float32", [1, 10], "NC")],
        preprocess=Preprocess(kind="image", color="GRAY", size=[8, 8], scale=1 / 255),
        postprocess=Postprocess(kind="classification", top_k=5))
    return write_bundle(folder / "digits.edgebundle", manifest, {"model/model.onnx": onnx_path},
                        load_private_key(key)), pub


def measure(bundle: Path, pub: Path, video: Path, frames: int, threads: int, folder: Path, served: bool) -> dict:
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=folder / f"u-{bundle.stem}")
    m = vb.manifest
    session = load_session(vb.unpacked_to, m, threads=threads)
    pre, post = Preprocessor(m), Postprocessor(m)
    # reference statistics from the first 60 frames, as a conversion on calibration frames would record them
    src = open_source(str(video))
    calib = [pre(src.read()).feeds for _ in range(60)]
    inputs = np.concatenate([next(iter(f.values())) for f in calib])
    outputs = np.concatenate([session.run(f)[0] for f in calib])
    monitor = drift_monitor_for(m, reference_stats(inputs, m.inputs[0].layout, outputs), DriftConfig(window=100))
    observers = Observers()  # what the live feed does with each answered frame, under the agent's CPU budget
    budget = CpuBudget()
    observers.add_observer(lambda s: budget.run(
        lambda: monitor.observe(next(iter(s.feeds.values())), s.outputs, s.result)))
    frame_ms, stats_ms, sent = [], [], []
    src = open_source(str(video))
    for i in range(frames):
        t0 = time.perf_counter()
        frame = src.read()
        if frame is None:
            src = open_source(str(video))
            frame = src.read()
        prepared = pre(frame)
        out = session.run(prepared.feeds)
        result = post(out, prepared.geometry)
        t1 = time.perf_counter()
        c1 = time.thread_time()
        observers.notify(LiveSample(FrameInput(prepared.frame), None, prepared.feeds, out, (t1 - t0) * 1000,
                                    result, prepared.geometry))
        c2 = time.thread_time()
        if i >= 10:  # warm-up
            frame_ms.append((t1 - t0) * 1000)
            stats_ms.append((c2 - c1) * 1000)
        if len(sent) < 100:
            sent.append(prepared.feeds)
    out = {**_shares(frame_ms, stats_ms, monitor), "observed": budget.run_count, "not_sampled": budget.skipped}
    if served:
        monitor = drift_monitor_for(m, monitor.reference, DriftConfig(window=100))
        out["served"] = _served(m, session, sent, 3 * frames, monitor)  # long enough for the budget's steady state
    return out


def _shares(frame_ms: list[float], stats_ms: list[float], monitor) -> dict:  # noqa: ANN001
    f, s = np.asarray(frame_ms), np.asarray(stats_ms)
    return {"frames": len(f), "frame_ms_mean": round(float(f.mean()), 3), "frame_ms_p50": round(float(np.median(f)), 3),
            "stats_cpu_ms_mean": round(float(s.mean()), 4), "stats_cpu_ms_p50": round(float(np.median(s)), 4),
            "stats_share_percent": round(100.0 * float(s.mean()) / float(f.mean()), 2),
            "stats_share_percent_p50": round(100.0 * float(np.median(s)) / float(np.median(f)), 2),
            "drift_state": monitor.snapshot().state}


def _served(m: Manifest, session, feeds: list[dict], requests: int, monitor) -> dict:  # noqa: ANN001
    """The frames as tritonclient requests to the serving endpoint; the drift observer's CPU on the request thread."""
    import tritonclient.http as triton

    from edge_agent.serving import HttpOptions, ModelHolder, ServedModel, start_serving, stop_serving

    observer_ms: list[float] = []
    budget = CpuBudget()

    def observe(sample: LiveSample) -> None:  # the agent's DriftWatch: the monitor under its CPU budget
        c0 = time.thread_time()
        budget.run(lambda: monitor.observe(next(iter(sample.feeds.values())), sample.outputs, sample.result))
        observer_ms.append((time.thread_time() - c0) * 1000)

    server = start_serving(ModelHolder(ServedModel(m, session)), options=HttpOptions(port=0))
    server.service.add_observer(observe)
    request_ms = []
    try:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        spec = m.inputs[0]
        for i in range(requests):
            x = feeds[i % len(feeds)][spec.name]
            inp = triton.InferInput(spec.name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            t0 = time.perf_counter()
            client.infer(m.name, [inp])
            if i >= 10:
                request_ms.append((time.perf_counter() - t0) * 1000)
        client.close()
    finally:
        stop_serving(server)
    return {**_shares(request_ms, observer_ms[10:], monitor), "observed": budget.run_count, "not_sampled": budget.skipped}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-served", dest="served", action="store_false", help="skip the served-requests measurement")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        folder = Path(tmp)
        video = photo_video(folder / "photos.avi", 120)
        for name, (bundle, pub) in (("mobilenetv2-224", build_bundle(folder)), ("digits-8x8", digits_bundle(folder))):
            print(f"{name}: measuring {args.frames} frames ...", file=sys.stderr)
            results[name] = measure(bundle, pub, video, args.frames, args.threads, folder, args.served)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{name:<16} frame {r['frame_ms_mean']:.2f} ms (p50 {r['frame_ms_p50']:.2f})  drift statistics "
                  f"{r['stats_cpu_ms_mean'] * 1000:.0f} us CPU (p50 {r['stats_cpu_ms_p50'] * 1000:.0f})  = "
                  f"{r['stats_share_percent']:.2f} % of the frame (medians {r['stats_share_percent_p50']:.2f} %; "
                  f"target < 5 %); observed {r['observed']} of {r['observed'] + r['not_sampled']}")
            if "served" in r:
                q = r["served"]
                print(f"{'  served':<16} request {q['frame_ms_mean']:.2f} ms (p50 {q['frame_ms_p50']:.2f})  drift "
                      f"observer {q['stats_cpu_ms_mean'] * 1000:.0f} us CPU (p50 {q['stats_cpu_ms_p50'] * 1000:.0f})  = "
                      f"{q['stats_share_percent']:.2f} % of the request; observed {q['observed']} of "
                      f"{q['observed'] + q['not_sampled']}")
    shares = [r["stats_share_percent"] for r in results.values()] + \
        [r["served"]["stats_share_percent"] for r in results.values() if "served" in r]
    return 0 if all(x < 5.0 for x in shares) else 1


if __name__ == "__main__":
    sys.exit(main())
