"""Camera/video pipeline end to end: generated videos through the digits int8 bundle, image folders,
latest-frame policy against a slow model, no loss on files, typed source errors and reconnects."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from .camera_helpers import SyntheticLiveSource, digit_frames, write_video
from edge_agent.bundle import TrustStore, verify_bundle
from edge_agent.cli import main
from edge_agent.pipeline.preprocess import preprocess_image
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.sinks import CollectSink, MjpegPreviewSink
from edge_agent.pipeline.sources import CaptureSource, ReconnectPolicy, SourceLost, SourceOpenError, open_source
from edge_agent.runtimes import load_session

N_FRAMES = 120
SIZE = 32


@pytest.fixture(scope="module")
def unpacked(int8_bundle, digits, tmp_path_factory):
    vb = verify_bundle(int8_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path_factory.mktemp("unpacked") / "b")
    return vb


@pytest.fixture(scope="module")
def frames(digits):
    return digit_frames(digits.x_test[:N_FRAMES], SIZE)


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "digits.avi", frames)


def float_reference(digits, unpacked, frames) -> np.ndarray:
    """The float torch model's labels on the same frames, preprocessed as the manifest says."""
    m = unpacked.manifest
    batch = np.concatenate([preprocess_image(f[:, :, ::-1], m.preprocess, m.inputs[0])[0] for f in frames])
    with torch.no_grad():
        return digits.model(torch.from_numpy(batch)).argmax(1).numpy()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_video_labels_match_float_model(int8_bundle, digits, unpacked, frames, video, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    code, out, err = run_cli(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub),
                              "--output", str(results), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == N_FRAMES == summary["frames"]
    assert [r["frame"] for r in records] == list(range(N_FRAMES))  # every frame, in order
    assert summary["dropped"] == 0 and summary["errors"] == 0 and summary["policy"] == "all"
    labels = np.array([r["label"] for r in records])
    reference = float_reference(digits, unpacked, frames)
    agreement = float((labels == reference).mean())
    assert agreement >= 0.95, agreement
    # the video really holds the digits: the labels mostly match the ground truth too
    assert float((labels == digits.y_test[:N_FRAMES]).mean()) >= 0.85
    for stage in ("decode", "preprocess", "inference", "postprocess", "end_to_end"):
        assert summary["stats"]["latency_ms"][stage]["count"] == N_FRAMES


def test_image_folder_and_single_image_give_the_same_labels(int8_bundle, digits, frames, video, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        assert cv2.imwrite(str(folder / f"{i:04d}.png"), f)
    (folder / "notes.txt").write_text("not an image")
    code, _, err = run_cli(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub),
                            "--output", str(tmp_path / "video.jsonl")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", str(int8_bundle), "--source", str(folder), "--trust", str(digits.pub),
                            "--output", str(tmp_path / "folder.jsonl")], capsys)
    assert code == 0, err
    from_video = [json.loads(line) for line in (tmp_path / "video.jsonl").read_text().splitlines()]
    from_folder = [json.loads(line) for line in (tmp_path / "folder.jsonl").read_text().splitlines()]
    assert [r["label"] for r in from_folder] == [r["label"] for r in from_video]
    assert [r["image"] for r in from_folder] == [f"{i:04d}.png" for i in range(N_FRAMES)]
    # a single image on stdout (JSON lines only: the text summary goes to stderr, so `| jq` reads every line)
    code, out, err = run_cli(["run", str(int8_bundle), "--source", str(folder / "0007.png"), "--trust", str(digits.pub)], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["label"] == from_video[7]["label"]
    assert err.strip().splitlines()[-1].startswith("1 frames from image")
    # with --json the summary is one more JSON line after the results
    code, out, err = run_cli(["run", str(int8_bundle), "--source", str(folder), "--trust", str(digits.pub), "--json"],
                             capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["label"] for r in records[:-1]] == [r["label"] for r in from_video]
    assert records[-1]["frames"] == N_FRAMES and "stats" in records[-1]


def test_plain_run_on_images_still_works(int8_bundle, digits, frames, tmp_path, capsys):
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), frames[3])
    code, out, err = run_cli(["run", str(int8_bundle), str(png), "--trust", str(digits.pub), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["input"] == str(png)
    code, _, err = run_cli(["run", str(int8_bundle), "--trust", str(digits.pub)], capsys)
    assert code == 2 and "--source" in err


def slow(delay: float):
    def infer(session, feeds):
        time.sleep(delay)
        return session.run(feeds)
    return infer


def test_latest_frame_policy_keeps_latency_bounded_with_a_slow_model(unpacked, frames):
    session = load_session(unpacked.unpacked_to, unpacked.manifest, threads=1)
    runs = {}
    for policy in ("latest", "all"):
        source = SyntheticLiveSource(frames, fps=50.0)  # a frame every 20 ms; the model takes 100 ms
        sink = CollectSink()
        pipe = Pipeline(source, session, unpacked.manifest, [sink], policy=policy, max_frames=10, infer_fn=slow(0.1))
        summary = pipe.run()
        runs[policy] = (summary, sink.records)
    latest, records = runs["latest"]
    assert latest.frames == 10 and len(records) == 10
    assert latest.dropped > 0  # stale frames were dropped and counted
    stale = [r["stale_frames"] for r in records]
    assert max(stale) <= 2, stale  # every inferred frame was (almost) the newest one
    # every captured frame is accounted for: processed, dropped, or still in a hand-over slot
    assert 0 <= latest.captured - latest.frames - latest.dropped <= 2
    frame_ids = [r["frame"] for r in records]
    assert frame_ids == sorted(frame_ids) and frame_ids[-1] - frame_ids[0] > 10  # skipped ahead
    # the same source with the no-loss policy holds the camera back instead: every frame, in order
    fifo, fifo_records = runs["all"]
    assert fifo.dropped == 0
    assert [r["frame"] for r in fifo_records] == list(range(10))


def test_file_source_loses_no_frame_with_a_slow_model(unpacked, video):
    session = load_session(unpacked.unpacked_to, unpacked.manifest, threads=1)
    source = open_source(str(video))
    assert not source.live
    sink = CollectSink()
    summary = Pipeline(source, session, unpacked.manifest, [sink], max_frames=30, infer_fn=slow(0.01)).run()
    assert summary.policy == "all" and summary.dropped == 0
    assert [r["frame"] for r in sink.records] == list(range(30))


def test_sources_that_cannot_be_opened_raise_typed_errors(tmp_path):
    not_video = tmp_path / "clip.mp4"
    not_video.write_text("this is not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [str(tmp_path / "missing.mp4"), str(not_video), str(empty), "/dev/video99", "rtsp://127.0.0.1:1/stream"]
    for spec in cases:
        with pytest.raises(SourceOpenError) as info:
            open_source(spec, open_timeout_ms=2000)
        assert info.value.exit_code == 70
        assert "\n" not in str(info.value) and str(info.value)


def test_bad_video_path_exits_non_zero_with_one_line(int8_bundle, digits, tmp_path, capsys):
    code, out, err = run_cli(["run", str(int8_bundle), "--source", str(tmp_path / "nope.mp4"), "--trust", str(digits.pub)], capsys)
    assert code == 70
    assert err.strip().splitlines() == [f"edge-agent: error: video source {tmp_path / 'nope.mp4'} does not exist"]
    assert out == ""


def _feed(server: MjpegPreviewSink, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        server.publish(np.full((48, 64, 3), i % 200, np.uint8))
        i += 1
        time.sleep(0.02)


def test_live_stream_reconnects_after_a_drop_then_gives_up(tmp_path):
    """A real HTTP MJPEG stream (our preview server) read through OpenCV/FFmpeg: the server goes away,
    comes back on the same port (reconnect), then goes away for good (bounded back-off, SourceLost)."""
    stop = threading.Event()
    server = MjpegPreviewSink()
    feeder = threading.Thread(target=_feed, args=(server, stop), daemon=True)
    feeder.start()
    port = server.port
    restarted: dict[str, MjpegPreviewSink] = {}

    def sleep_and_restart(delay: float) -> None:
        time.sleep(delay)
        if "server" not in restarted:  # the camera comes back before the first retry
            restarted["server"] = MjpegPreviewSink(port=port)
            threading.Thread(target=_feed, args=(restarted["server"], stop2), daemon=True).start()

    stop2 = threading.Event()
    try:
        source = CaptureSource(server.url, live=True, description="test stream", sleep=sleep_and_restart,
                               reconnect=ReconnectPolicy(max_attempts=3, initial_delay=0.05, max_total=5),
                               open_timeout_ms=3000, read_timeout_ms=3000)
        assert source.live
        first = [source.read() for _ in range(3)]
        assert all(f is not None and f.image.shape == (48, 64, 3) for f in first)
        stop.set()
        server.close()
        got = [source.read() for _ in range(5)]  # drains, drops out, reconnects to the new server
        assert source.reconnects == 1 and all(f is not None for f in got)
        stop2.set()
        restarted["server"].close()
        with pytest.raises(SourceLost) as info:
            for _ in range(1000):
                source.read()
        assert info.value.exit_code == 71 and "after 3 attempts" in str(info.value)
        source.close()
    finally:
        stop.set()
        stop2.set()
