"""Benchmark: camera pipeline frames/second over a generated video vs bare inference of the same bundle.

Builds a MobileNetV2-shaped CNN (plain torch, random weights, 3x224x224), packs it into a signed fp32
bundle, writes a 640x480 MJPG video, then measures side by side in one run:

  bare      session.run on one preprocessed tensor, back to back (the ceiling)
  pipeline  decode -> preprocess -> inference -> postprocess -> sink over every frame of the video

and prints pipeline/bare throughput (target >= 0.90) and the latency the pipeline adds per frame
(end-to-end p50 minus inference p50). Usage:

    PYTHONPATH=. python scripts/bench_pipeline.py [--frames 150] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.bundle import (  # noqa: E402
    Manifest, Postprocess, Preprocess, TensorSpec, TrustStore, generate_keypair, load_private_key, verify_bundle,
    write_bundle,
)
from edge_agent.pipeline.runner import Pipeline  # noqa: E402
from edge_agent.pipeline.sinks import CollectSink  # noqa: E402
from edge_agent.pipeline.sources import open_source  # noqa: E402
from edge_agent.pipeline.stages import Preprocessor  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from edge_agent.telemetry.latency import summarize_ms  # noqa: E402


def _block(cin: int, cout: int, stride: int, expand: int) -> nn.Module:
    hidden = cin * expand

    class Inverted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.residual else y

    return Inverted()


def mobilenet_v2_like(classes: int = 1000) -> nn.Module:
    """MobileNetV2's layer plan (width 1.0): ~3.5 M parameters, ~300 MFLOPs at 224x224."""
    plan = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, c, n, s in plan:
        for i in range(n):
            layers.append(_block(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(1280, classes)]
    return nn.Sequential(*layers).eval()


def build_bundle(folder: Path, resampler: str = "pillow") -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = mobilenet_v2_like()
    onnx_path = folder / "mnv2.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(onnx_path), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"], verbose=False)
    key, pub = generate_keypair(folder / "keys")
    manifest = Manifest(
        name="mobilenetv2-like", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime",
        precision="fp32", model_file="model/model.onnx",
        inputs=[TensorSpec("image", "float32", [1, 3, 224, 224], "NCHW")],
        outputs=[TensorSpec("logits", "float32", [1, 1000], "NC")],
        preprocess=Preprocess(kind="image", color="RGB", size=[224, 224], resize="bilinear", scale=1 / 255,
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], resampler=resampler),
        postprocess=Postprocess(kind="classification", top_k=5),
    )
    bundle = write_bundle(folder / "mnv2.edgebundle", manifest, {"model/model.onnx": onnx_path}, load_private_key(key))
    return bundle, pub


def write_video(path: Path, n: int) -> Path:
    """640x480 MJPG frames: a moving gradient with shapes, so decoding does real work."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
        cv2.circle(img, (100 + 3 * i % 440, 240), 60, (0, 0, 255), -1)
        writer.write(img)
    writer.release()
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for both sides (default: the pipeline's own default, "
                    "all cores since det4, all cores but one before; bare inference with all cores is timed too)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved bare/pipeline rounds (default 3)")
    ap.add_argument("--resampler", choices=("pillow", "opencv"), default="pillow",
                    help="the manifest's resize library (default pillow: what the converter records for classifiers, "
                    "torchvision's; opencv: what it records for detectors)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        bundle, pub = build_bundle(folder, args.resampler)
        video = write_video(folder / "clip.avi", args.frames)
        vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=folder / "unpacked")
        from edge_agent.pipeline.cli import pipeline_threads

        args.threads = args.threads or pipeline_threads()
        session = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        all_cores = os.cpu_count() or 1
        session_all = load_session(vb.unpacked_to, vb.manifest, threads=all_cores)

        # bare inference on one preprocessed frame vs the whole pipeline over the video file (every
        # frame), interleaved `--repeats` times so load from other processes hits both alike; medians.
        first = open_source(str(video)).read()
        assert first is not None
        feeds = Preprocessor(vb.manifest)(first).feeds
        for _ in range(10):
            session.run(feeds)
        Pipeline(open_source(str(video)), session, vb.manifest, [CollectSink()], max_frames=10).run()  # warm-up
        bare_runs, pipe_runs, bare_all = [], [], []
        for _ in range(10):
            session_all.run(feeds)
        for _ in range(args.repeats):
            time.sleep(0.2)  # let the other session's spinning threads park
            t0 = time.perf_counter()
            for _ in range(args.frames):
                session_all.run(feeds)
            bare_all.append(args.frames / (time.perf_counter() - t0))
            time.sleep(0.2)
            samples = []
            t0 = time.perf_counter()
            for _ in range(args.frames):
                t = time.perf_counter()
                session.run(feeds)
                samples.append((time.perf_counter() - t) * 1000)
            bare_runs.append((args.frames / (time.perf_counter() - t0), summarize_ms(samples)))
            pipe_runs.append(Pipeline(open_source(str(video)), session, vb.manifest, [CollectSink()]).run())
        bare_fps, bare = sorted(bare_runs, key=lambda r: r[0])[len(bare_runs) // 2]
        summary = sorted(pipe_runs, key=lambda r: r.fps)[len(pipe_runs) // 2]
        lat = summary.stats["latency_ms"]
        ratios = [round(p.fps / b[0], 3) for p, b in zip(pipe_runs, bare_runs)]
        best_bare = max(bare_fps, sorted(bare_all)[len(bare_all) // 2])

    ratio = summary.fps / bare_fps
    added = lat["end_to_end"]["p50_ms"] - lat["inference"]["p50_ms"]
    work = sum(lat[k]["p50_ms"] for k in ("decode", "preprocess", "postprocess"))
    report = {
        "frames": summary.frames, "threads": args.threads, "resampler": args.resampler,
        "bare_inference_fps": round(bare_fps, 2), "pipeline_fps": round(summary.fps, 2), "ratio": round(ratio, 3),
        "bare_inference_p50_ms": bare["p50_ms"],
        "pipeline_stage_p50_ms": {k: v.get("p50_ms") for k, v in lat.items()},
        "added_latency_p50_ms": round(added, 2),
        "non_inference_work_p50_ms": round(work, 2),
        "ratios_per_round": ratios,
        "bare_inference_fps_all_cores": round(sorted(bare_all)[len(bare_all) // 2], 2), "all_cores": all_cores,
        "ratio_vs_best_bare": round(summary.fps / best_bare, 3),
        "dropped": summary.dropped,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model: MobileNetV2-shaped fp32, 3x224x224, ONNX Runtime {args.threads} threads; video 640x480 MJPG, {summary.frames} frames")
        print(f"bare inference : {bare_fps:7.2f} fps  (p50 {bare['p50_ms']:.2f} ms)")
        print(f"pipeline       : {summary.fps:7.2f} fps  ({100 * ratio:.1f} % of bare; target >= 90 %)")
        print("pipeline p50 ms: " + ", ".join(f"{k} {v.get('p50_ms', 0):.2f}" for k, v in lat.items()))
        print(f"per-round pipeline/bare ratios: {ratios}")
        print(f"bare inference with all {all_cores} cores: {report['bare_inference_fps_all_cores']:.2f} fps; "
              f"pipeline vs the best bare figure: {100 * report['ratio_vs_best_bare']:.1f} %")
        print(f"per-frame work besides inference (decode+preprocess+postprocess p50): {work:.2f} ms")
        print(f"added latency per frame (end-to-end p50 - inference p50, incl. queueing of a file source): {added:.2f} ms; "
              f"dropped {summary.dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
