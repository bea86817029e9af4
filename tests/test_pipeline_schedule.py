"""How the video pipeline shares the cores with inference (edge_agent.pipeline.scheduling): the serial schedule
gives the same boxes as the threaded one on a real detector and a real video, the helper threads really run at
the priority asked for (read back from /proc), and the choices are refused where they cannot work.
Speed is not asserted here: scripts/bench_detect.py measures the schedules side by side."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main as convert_main
from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle
from edge_agent.cli import main as agent_main
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.sinks import CollectSink, Sink
from edge_agent.pipeline.sources import open_source
from edge_agent.runtimes import load_session

from .camera_helpers import SyntheticLiveSource, detector_bundle, write_video
from .detector_data import MEGAMIND, blazeface_anchors, blazeface_tflite, photos

SCHED_IDLE = 5  # sched(7): the policy number /proc reports


def proc_sched(tid: int) -> tuple[int, int]:
    """(nice, policy) of a thread of this process, parsed from /proc/self/task/TID/stat (fields 19 and 41)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is stat field 3
    return int(fields[16]), int(fields[38])


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    """MediaPipe BlazeFace converted to a signed fp32 TFLite detection bundle, unpacked."""
    tmp = tmp_path_factory.mktemp("face")
    key, pub = generate_keypair(tmp / "keys")
    np.save(tmp / "anchors.npy", blazeface_anchors())
    out = tmp / "face.edgebundle"
    rc = convert_main(["-q", "convert", str(blazeface_tflite()), "--profile", "raspberry-pi-4", "--anchors",
                       str(tmp / "anchors.npy"), "--mean", "0.5", "--std", "0.5", "--calibration",
                       str(photos(tmp / "photos")), "--key", str(key), "--out", str(out), "--bench-runs", "0"])
    assert rc == 0
    return verify_bundle(out, TrustStore.from_paths([pub]), unpack_to=tmp / "unpacked")


def test_serial_schedule_draws_the_same_faces_as_the_threaded_one_on_one_thread(face):
    """schedule 'serial' decodes, infers and postprocesses each frame in turn on one thread: same boxes, frame by
    frame, as the four threaded stages on Megamind (a face in most frames), and every stage on one native thread."""
    session = load_session(face.unpacked_to, face.manifest, threads=2)
    seen: dict[str, set[int]] = {"infer": set(), "sink": set()}

    def infer(s, feeds):
        seen["infer"].add(threading.get_native_id())
        return s.run(feeds)

    class Where(Sink):
        def write(self, record, frame):
            seen["sink"].add(threading.get_native_id())

    runs = {}
    for schedule in ("threads", "serial"):
        seen["infer"].clear(), seen["sink"].clear()
        sink = CollectSink()
        summary = Pipeline(open_source(str(MEGAMIND)), session, face.manifest, [sink, Where()], max_frames=60,
                           schedule=schedule, infer_fn=infer).run()
        assert summary.frames == 60 and summary.errors == 0
        runs[schedule] = [(r["frame"], r["detections"]) for r in sink.records]
        if schedule == "serial":
            assert seen["infer"] == seen["sink"] and len(seen["infer"]) == 1
        else:
            assert seen["infer"].isdisjoint(seen["sink"])
    assert sum(len(d) for _, d in runs["serial"]) >= 30  # real faces were found
    assert runs["serial"] == runs["threads"]


def test_two_streams_draw_the_same_faces_as_one_session_on_both_threads(face):
    """Inference streams (two single-threaded LiteRT sessions on consecutive frames, threaded and serial) give the
    boxes of one session on two threads, bit for bit, frame by frame in order, on a real detector and video."""
    runs = {}
    for name, sessions, schedule in (("one", [load_session(face.unpacked_to, face.manifest, threads=2)], "threads"),
                                     ("streams", [load_session(face.unpacked_to, face.manifest, threads=1)
                                                  for _ in range(2)], "threads"),
                                     ("serial streams", [load_session(face.unpacked_to, face.manifest, threads=1)
                                                         for _ in range(2)], "serial")):
        sink = CollectSink()
        summary = Pipeline(open_source(str(MEGAMIND)), sessions, face.manifest, [sink], max_frames=60,
                           schedule=schedule).run()
        assert summary.frames == 60 and summary.streams == len(sessions)
        runs[name] = [(r["frame"], r["detections"]) for r in sink.records]
    assert [f for f, _ in runs["one"]] == list(range(60)) and sum(len(d) for _, d in runs["one"]) >= 30
    assert runs["streams"] == runs["one"] and runs["serial streams"] == runs["one"]


@pytest.mark.parametrize("priority,expected", [("low", (10, 0)), ("idle", (None, SCHED_IDLE))])
def test_helper_threads_run_at_the_priority_asked_and_inference_at_the_process_one(priority, expected, tmp_path):
    """capture, preprocess and postprocess + sinks yield to the inference threads: nice +10 ('low') or SCHED_IDLE
    ('idle') as the kernel reports it per thread; the inference thread keeps the process's priority."""
    key, pub = generate_keypair(tmp_path / "keys")
    bundle = detector_bundle(tmp_path, key, {"output0": np.zeros((1, 6, 8), np.float32)}, {"format": "yolo"})
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp_path / "u")
    video = write_video(tmp_path / "v.avi", [np.full((48, 64, 3), i * 20, np.uint8) for i in range(8)])
    base = os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)
    threads: dict[str, tuple[int, int]] = {}

    source = open_source(str(video))  # the real video source, noting its reading thread's priority
    read = source.read

    def probe_read():
        threads["capture"] = proc_sched(threading.get_native_id())
        return read()

    source.read = probe_read  # type: ignore[method-assign]

    def infer(s, feeds):
        threads["inference"] = proc_sched(threading.get_native_id())
        return s.run(feeds)

    class Where(Sink):
        def write(self, record, frame):
            threads["finish"] = proc_sched(threading.get_native_id())

    pipe = Pipeline(source, load_session(vb.unpacked_to, vb.manifest), vb.manifest, [Where()],
                    helper_priority=priority, infer_fn=infer)
    preprocess = pipe.preprocess

    def probe_preprocess(frame):
        threads["preprocess"] = proc_sched(threading.get_native_id())
        return preprocess(frame)

    pipe.preprocess = probe_preprocess  # type: ignore[assignment]
    assert pipe.run().frames == 8
    nice, policy = expected
    for name in ("capture", "preprocess", "finish"):
        assert threads[name][1] == policy
        if nice is not None:
            assert threads[name][0] == min(19, base[0] + nice)
    assert threads["inference"] == base
    assert proc_sched(threading.get_native_id()) == base  # the caller's thread is left alone


def test_auto_schedule_is_serial_for_files_with_several_streams_and_threads_otherwise(tmp_path):
    """`--schedule auto`: several streams on a file run serial (the other streams keep the cores busy while one
    decodes, and hand-overs cost CPU); one stream, or a live source, overlaps the stages on helper threads."""
    from edge_agent.pipeline.scheduling import resolve_schedule

    assert resolve_schedule("auto", "all", 2) == "serial" and resolve_schedule("auto", "all", 4) == "serial"
    assert resolve_schedule("auto", "all", 1) == "threads" and resolve_schedule("auto", "latest", 2) == "threads"
    assert resolve_schedule("threads", "all", 2) == "threads"  # asked for: taken as given
    assert resolve_schedule("auto", "all", 2, "low") == "threads"  # a helper priority needs helper threads
    key, pub = generate_keypair(tmp_path / "keys")
    bundle = detector_bundle(tmp_path, key, {"output0": np.zeros((1, 6, 8), np.float32)}, {"format": "yolo"})
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp_path / "u")
    video = write_video(tmp_path / "v.avi", [np.full((48, 64, 3), i * 20, np.uint8) for i in range(6)])
    sessions = [load_session(vb.unpacked_to, vb.manifest, threads=1) for _ in range(2)]
    sink = CollectSink()
    summary = Pipeline(open_source(str(video)), sessions, vb.manifest, [sink]).run()
    assert (summary.schedule, summary.streams, summary.frames) == ("serial", 2, 6)
    assert [r["frame"] for r in sink.records] == list(range(6))
    live = SyntheticLiveSource([np.zeros((48, 64, 3), np.uint8)], fps=30.0, total=3)
    assert Pipeline(live, sessions, vb.manifest, max_frames=2).run().schedule == "threads"


def test_serial_is_refused_for_live_sources_and_bad_names(tmp_path, capsys):
    key, pub = generate_keypair(tmp_path / "keys")
    bundle = detector_bundle(tmp_path, key, {"output0": np.zeros((1, 6, 8), np.float32)}, {"format": "yolo"})
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp_path / "u")
    session = load_session(vb.unpacked_to, vb.manifest)
    live = SyntheticLiveSource([np.zeros((48, 64, 3), np.uint8)], fps=30.0, total=3)
    with pytest.raises(ValueError, match="policy 'all'"):
        Pipeline(live, session, vb.manifest, schedule="serial")
    with pytest.raises(ValueError, match="helper_priority"):
        Pipeline(live, session, vb.manifest, helper_priority="realtime")
    video = write_video(tmp_path / "v.avi", [np.zeros((48, 64, 3), np.uint8)] * 3)
    rc = agent_main(["run", str(bundle), "--source", str(video), "--trust", str(pub), "--output", "none",
                     "--schedule", "serial", "--policy", "latest"])
    assert rc == 2 and "policy 'all'" in capsys.readouterr().err
    for bad in ("0", "-3"):  # FFmpeg would be handed them as they are
        with pytest.raises(SystemExit) as exit_:
            agent_main(["run", str(bundle), "--source", str(video), "--trust", str(pub), f"--decode-threads={bad}"])
        assert exit_.value.code == 2 and "whole number of threads >= 1" in capsys.readouterr().err


def test_the_cli_runs_inference_on_all_cores_and_reports_how_the_stages_shared_them(tmp_path, capsys):
    """`edge-agent run --source` without --threads used all cores but one: a YOLO pipeline on 2 cores then ran at
    0.72 of the bare loop on both (docs/detection.md). The summary says what ran: streams, threads, schedule, priority, and
    FFmpeg's decoding threads: one for a video file when inference takes every core (its own frame threads would
    only preempt the runtime's), FFmpeg's choice otherwise, or --decode-threads."""
    import json

    key, pub = generate_keypair(tmp_path / "keys")
    bundle = detector_bundle(tmp_path, key, {"output0": np.zeros((1, 6, 8), np.float32)}, {"format": "yolo"})
    video = write_video(tmp_path / "v.avi", [np.zeros((48, 64, 3), np.uint8)] * 4)
    runs = {}
    for extra in ([], ["--threads", "1", "--schedule", "serial", "--helper-priority", "idle"], ["--decode-threads", "3"]):
        rc = agent_main(["run", str(bundle), "--source", str(video), "--trust", str(pub), "--output", "none",
                         "--json", *extra])
        assert rc == 0
        runs[len(extra)] = json.loads(capsys.readouterr().out)
    default, chosen, decode3 = runs[0], runs[6], runs[2]
    assert default["frames"] == chosen["frames"] == 4
    assert default["decode_threads"] == 1 and decode3["decode_threads"] == 3
    if (os.cpu_count() or 1) > 1:  # one inference thread leaves a core: FFmpeg decides (one thread per core)
        assert chosen["decode_threads"] > 1
    cores = os.cpu_count() or 1  # a file: one single-threaded inference stream per core (--streams auto)
    assert (default["streams"], default["inference_threads"]) == (cores, 1)
    assert chosen["streams"] == 1
    # several streams on a file: serial (no hand-overs); one stream overlaps decoding on helper threads
    assert (default["schedule"], default["helper_priority"]) == ("serial" if cores > 1 else "threads", "normal")
    assert (chosen["inference_threads"], chosen["schedule"], chosen["helper_priority"]) == (1, "serial", "idle")
