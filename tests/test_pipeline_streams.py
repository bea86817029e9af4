"""Inference streams (edge_agent.pipeline: several sessions of one model on consecutive frames): the sinks get every
frame in order whichever stream finishes first, the answers are those of one session, failed frames are skipped
without holding up the rest, `--streams auto` picks by source kind, and the CLI runs and reports them. Speed is not
asserted here: scripts/bench_detect.py measures streams against both bare loops side by side."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle
from edge_agent.cli import main as agent_main
from edge_agent.pipeline.channels import CLOSED, EMPTY, ReorderChannel
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.scheduling import STREAM_MEMORY_FACTOR, ScheduleError, memory_streams, resolve_streams
from edge_agent.telemetry.system import available_memory_bytes
from edge_agent.pipeline.sinks import CollectSink
from edge_agent.pipeline.sources import open_source
from edge_agent.runtimes import load_session

from .camera_helpers import SyntheticLiveSource, detector_bundle, digit_frames, write_video


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A constant ONNX detector bundle (unpacked) and a 12-frame video whose frames differ."""
    tmp = tmp_path_factory.mktemp("streams")
    key, pub = generate_keypair(tmp / "keys")
    bundle = detector_bundle(tmp, key, {"output0": np.zeros((1, 6, 8), np.float32)}, {"format": "yolo"})
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp / "u")
    video = write_video(tmp / "v.avi", [np.full((48, 64, 3), i * 20, np.uint8) for i in range(12)])
    return vb, video


def records(sink: CollectSink) -> list[tuple]:
    """What a sink got, without the wall-clock fields."""
    return [(r["frame"], r["stale_frames"], json.dumps(r.get("detections", r.get("label")))) for r in sink.records]


def test_reorder_channel_hands_results_on_in_ticket_order_and_skips_failed_frames():
    ch = ReorderChannel(maxsize=4)
    assert ch.put_at(2, "c") and ch.put_at(1, None) and ch.get(0) is EMPTY  # 0 is still out: nothing is ready
    assert ch.put_at(0, "a")
    assert [ch.get(0), ch.get(0)] == ["a", "c"]  # 1 failed: skipped
    ch.put_at(4, "e")
    ch.close()  # 3 never comes: what waits is released in order
    assert [ch.get(0), ch.get(0)] == ["e", CLOSED]


@pytest.mark.parametrize("schedule", ["threads", "serial"])
def test_frames_reach_the_sinks_in_order_when_a_later_frame_finishes_first(tiny, schedule):
    """Two sessions, the first slow on even frames: frame 2 finishes after frame 3, yet the sinks see 0, 1, 2, ...
    and each session answered frames (a single FIFO after two inference threads would hand 3 on before 2)."""
    vb, video = tiny
    sessions = [load_session(vb.unpacked_to, vb.manifest, threads=1) for _ in range(2)]
    served: dict[int, list[int]] = {0: [], 1: []}

    def infer(session, feeds):
        k = sessions.index(session)
        served[k].append(int(feeds["image"].mean()))
        if k == 0:
            time.sleep(0.05)
        return session.run(feeds)

    sink = CollectSink()
    summary = Pipeline(open_source(str(video)), sessions, vb.manifest, [sink], infer_fn=infer, schedule=schedule).run()
    assert summary.frames == 12 and summary.streams == 2 and summary.errors == 0
    assert [r["frame"] for r in sink.records] == list(range(12))
    assert served[0] and served[1]  # both streams worked
    assert len(served[1]) > len(served[0])  # the fast one took more: frames went out of order inside


def test_a_failed_frame_in_one_stream_is_skipped_and_the_rest_keep_their_order(tiny):
    vb, video = tiny
    sessions = [load_session(vb.unpacked_to, vb.manifest, threads=1) for _ in range(2)]
    calls = []
    lock = threading.Lock()

    def infer(session, feeds):
        with lock:
            calls.append(1)
            n = len(calls)
        if n == 4:
            raise RuntimeError("bad frame")
        return session.run(feeds)

    sink = CollectSink()
    summary = Pipeline(open_source(str(video)), sessions, vb.manifest, [sink], infer_fn=infer).run()
    frames = [r["frame"] for r in sink.records]
    assert summary.errors == 1 and len(frames) == 11 and frames == sorted(frames)


def test_streams_on_a_live_source_stop_at_max_frames_exactly(tiny):
    vb, _ = tiny
    sessions = [load_session(vb.unpacked_to, vb.manifest, threads=1) for _ in range(2)]
    live = SyntheticLiveSource([np.zeros((48, 64, 3), np.uint8)], fps=200.0, total=200)
    sink = CollectSink()
    summary = Pipeline(live, sessions, vb.manifest, [sink], max_frames=7).run()
    assert summary.policy == "latest" and summary.frames == 7 and len(sink.records) == 7


def test_streams_auto_picks_by_source_kind_and_a_number_shares_the_threads():
    assert resolve_streams("auto", "all", 4) == (4, 1)  # files: throughput, one single-threaded session per thread
    assert resolve_streams("auto", "latest", 4) == (1, 4)  # live: one session on every thread (latency)
    assert resolve_streams(2, "latest", 4) == (2, 2)
    assert resolve_streams(3, "all", 2) == (3, 1)
    assert resolve_streams("auto", "all", 4, frames=1) == (1, 4)  # one image: one session, not one per core
    with pytest.raises(ScheduleError, match="streams"):
        resolve_streams(0, "all", 2)


def test_streams_auto_loads_no_more_sessions_than_half_the_available_memory_holds(tmp_path):
    """A Pi Zero 2 W has 4 cores and 512 MB: auto must not load a large model once per core."""
    mb = 1 << 20
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  524288 kB\nMemFree:  100000 kB\nMemAvailable:  358400 kB\n")
    available = available_memory_bytes(str(meminfo))
    assert available == 350 * mb
    assert available_memory_bytes(str(tmp_path / "absent")) is None
    assert memory_streams(12 * mb, available) == 4  # YOLOv8n-sized: one per core still fits
    assert memory_streams(20 * mb, available) == 2  # 175 MB // (3 x 20 MB)
    assert memory_streams(200 * mb, available) == 1  # never fewer than one
    assert memory_streams(12 * mb, None) is None  # unknown memory: no cap
    assert resolve_streams("auto", "all", 4, memory_cap=memory_streams(20 * mb, available)) == (2, 2)
    assert resolve_streams(4, "all", 4, memory_cap=1) == (4, 1)  # a number the user gave is taken as given


def test_cli_streams_auto_keeps_one_session_when_memory_is_short(int8_bundle, digits, tmp_path, capsys, monkeypatch):
    """The CLI measures the bundle's model file against MemAvailable: with memory for one session, a file runs on
    one session with every thread (1 KB available stands in for a board too small for two copies of the model)."""
    import edge_agent.pipeline.cli as pipeline_cli

    monkeypatch.setattr(pipeline_cli, "available_memory_bytes", lambda: 1 << 10)
    video = write_video(tmp_path / "digits.avi", digit_frames(digits.x_test[:5], 32))
    rc = agent_main(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub), "--threads", "2",
                     "--output", "none", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and (summary["frames"], summary["streams"], summary["inference_threads"]) == (5, 1, 2)


def test_cli_streams_give_the_labels_of_one_session_on_a_real_model(int8_bundle, digits, tmp_path, capsys):
    """The digits int8 CNN (onnxruntime) over a video: --streams 2 and the default (auto: 2 on a file with
    --threads 2) give the same per-frame labels as --streams 1, in frame order, and the summary says how many ran."""
    video = write_video(tmp_path / "digits.avi", digit_frames(digits.x_test[:40], 32))
    got = {}
    for streams in ("1", "2", None):
        out = tmp_path / f"r{streams}.jsonl"
        rc = agent_main(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub), "--threads", "2",
                         "--output", str(out), "--json", *(["--streams", streams] if streams else [])])
        summary = json.loads(capsys.readouterr().out)
        assert rc == 0 and summary["frames"] == 40
        assert summary["streams"] == int(streams or 2) and summary["inference_threads"] == (2 if streams == "1" else 1)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        got[streams] = [(r["frame"], r["label"], r["score"]) for r in rows]
    assert [f for f, _, _ in got["1"]] == list(range(40))
    assert got["2"] == got["1"] and got[None] == got["1"]


def test_cli_runs_one_image_on_one_session_with_every_thread(int8_bundle, digits, tmp_path, capsys):
    import cv2

    image = tmp_path / "one.png"
    cv2.imwrite(str(image), digit_frames(digits.x_test[:1], 32)[0])
    rc = agent_main(["run", str(int8_bundle), "--source", str(image), "--trust", str(digits.pub), "--threads", "2",
                     "--output", "none", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and (summary["frames"], summary["streams"], summary["inference_threads"]) == (1, 1, 2)


def test_cli_refuses_a_bad_stream_count(int8_bundle, digits, tmp_path, capsys):
    video = write_video(tmp_path / "v.avi", digit_frames(digits.x_test[:3], 32))
    with pytest.raises(SystemExit) as exited:  # argparse: usage line + one error line, exit 2
        agent_main(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub), "--streams", "0"])
    assert exited.value.code == 2 and "--streams" in capsys.readouterr().err
