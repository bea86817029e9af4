"""Reference statistics and drift (PSI) on real data: scikit-learn's digits and its two sample photos
(china.jpg, flower.jpg, shipped in the wheel), shifted the way cameras shift: darker, inverted, blurred."""

from __future__ import annotations

import json
import tarfile

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.bundle import REFERENCE_STATS_FILE, TrustStore, verify_bundle
from edge_agent.monitor.drift import DriftConfig, DriftMonitor, psi
from edge_agent.monitor.reference import Histogram, ReferenceStats, reference_stats
from examples import digits_cnn

from .monitor_fixtures import digits_video, scene_change_video  # noqa: F401 - fixtures

WINDOW, STRIDE = 100, 10


@pytest.fixture(scope="module")
def split():
    return digits_cnn.load_split()


@pytest.fixture(scope="module")
def digits_ref(split) -> ReferenceStats:
    x_train, _, _, _ = split
    return reference_stats(x_train, "NCHW")


def photo_crops(n: int, seed: int, size: int = 48) -> np.ndarray:
    """n random crops of both sample photos, as NCHW float inputs in [0, 1]."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = _photos()[i % 2]
        y, x = rng.integers(0, img.shape[0] - 2 * size), rng.integers(0, img.shape[1] - 2 * size)
        crop = cv2.resize(img[y:y + 2 * size, x:x + 2 * size], (size, size), interpolation=cv2.INTER_AREA)
        out.append(crop.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.stack(out)


_PHOTOS: list[np.ndarray] = []


def _photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(load_sample_images().images)
    return _PHOTOS


def stream_scores(ref: ReferenceStats, frames: np.ndarray, outputs: np.ndarray | None = None) -> dict[str, float]:
    mon = DriftMonitor(ref, "NCHW", kind="classification" if outputs is not None else None, config=DriftConfig(WINDOW, STRIDE))
    for i in range(len(frames)):
        mon.observe(frames[i:i + 1], None if outputs is None else [outputs[i:i + 1]])
    snap = mon.snapshot()
    assert snap.frames == min(WINDOW, len(frames))
    return snap.psi


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    ref = [0.1] * 10
    assert psi(ref, [10] * 10) == pytest.approx(0.0)
    small = psi(ref, [12, 8] * 5)
    large = psi(ref, [30, 0, 0, 0, 0, 0, 0, 0, 0, 70])
    assert 0 < small < 0.1 < 0.25 < large


def test_reference_is_small_json_and_round_trips(digits_ref):
    data = digits_ref.to_json()
    assert len(data) < 4096
    back = ReferenceStats.from_json(data)
    assert back.to_json() == data
    assert set(back.features) == {"input.brightness", "input.contrast", "input.intensity"}
    with pytest.raises(ValueError, match="schema"):
        ReferenceStats.from_json(json.dumps({"schema": 99}).encode())


def test_held_out_digits_do_not_drift_but_darkened_inverted_or_blurred_ones_do(digits_ref, split):
    _, _, x_test, _ = split
    live = x_test[:WINDOW]
    assert max(stream_scores(digits_ref, live).values()) < 0.25
    assert stream_scores(digits_ref, 1.0 - live)["input.brightness"] > 1.0  # white background, black ink
    assert stream_scores(digits_ref, live * 0.5)["input.brightness"] > 1.0  # under-exposed
    blurred = np.stack([cv2.GaussianBlur(im[0], (3, 3), 1.0)[None] for im in live])
    assert stream_scores(digits_ref, blurred)["input.contrast"] > 1.0


def test_real_photos_darkened_or_blurred_drift(split):
    ref = reference_stats(photo_crops(300, seed=1), "NCHW")
    live = photo_crops(WINDOW, seed=2)
    assert max(stream_scores(ref, live).values()) < 0.25
    assert stream_scores(ref, live * 0.4)["input.brightness"] > 1.0
    blurred = np.stack([cv2.GaussianBlur(im.transpose(1, 2, 0), (0, 0), 3).transpose(2, 0, 1) for im in live])
    assert stream_scores(ref, blurred)["input.contrast"] > 0.25


def test_class_distribution_drifts_when_the_scene_shows_other_digits(digits, split):
    """Output drift: the float model's answers on the eval data against a stream of only 0s and 1s."""
    import torch

    x_train, _, x_test, y_test = split
    with torch.no_grad():
        logits_train = digits.model(torch.from_numpy(x_train)).numpy()
        logits_test = digits.model(torch.from_numpy(x_test)).numpy()
    ref = reference_stats(x_train, "NCHW", logits_train, softmax=True, classes=10)
    assert max(stream_scores(ref, x_test[:WINDOW], logits_test[:WINDOW]).values()) < 0.25
    only01 = np.resize(np.flatnonzero(y_test < 2), WINDOW)  # ~90 of them: cycled to fill the window
    scores = stream_scores(ref, x_test[only01], logits_test[only01])
    assert scores["output.class"] > 1.0


def test_a_drifting_stream_raises_drift_within_the_window_and_clears_after(digits_ref, split):
    """The documented bound: `drift` at the latest window + stride frames after the scene changed."""
    _, _, x_test, _ = split
    mon = DriftMonitor(digits_ref, "NCHW", kind=None, config=DriftConfig(WINDOW, STRIDE))
    states = []
    for i in range(WINDOW + 20):
        mon.observe(x_test[i:i + 1], None)
        states.append(mon.snapshot().state)
    assert states[WINDOW - 2] == "warming_up" and states[-1] == "ok"
    raised_after = None
    for j in range(WINDOW + STRIDE):
        mon.observe(1.0 - x_test[j:j + 1], None)
        if mon.snapshot().state == "drift":
            raised_after = j + 1
            break
    assert raised_after is not None and raised_after <= WINDOW + STRIDE, raised_after
    assert mon.snapshot().worst in ("input.brightness", "input.intensity")
    for j in range(2 * WINDOW):  # the scene comes back: the state clears once the window is clean again
        mon.observe(x_test[j:j + 1], None)
    assert mon.snapshot().state == "ok"


def test_one_nan_input_leaves_the_live_channel_means_once_it_left_the_window(digits_ref, split):
    """Served tensors may hold NaN (the endpoint takes any float): the window's channel means were a running
    sum, which stayed NaN for the rest of the process after one such request (NaN - NaN is NaN)."""
    _, _, x_test, _ = split
    mon = DriftMonitor(digits_ref, "NCHW", kind=None, config=DriftConfig(WINDOW, STRIDE))
    for frame in [*x_test[:WINDOW], np.full_like(x_test[0], np.nan), *x_test[WINDOW:3 * WINDOW]]:
        mon.observe(frame[None], None)
    snap = mon.snapshot()
    want = float(x_test[2 * WINDOW:3 * WINDOW].mean())  # about the last WINDOW frames (scored every STRIDE)
    assert snap.state == "ok" and np.isfinite(snap.live["channel_mean"]).all(), snap
    assert snap.live["channel_mean"][0] == pytest.approx(want, abs=0.02)


def test_a_damaged_reference_is_refused_and_unknown_features_are_not_scored(digits_ref, split, tmp_path):
    """A NaN share made its feature's PSI NaN, which max() took for the worst: `drift ok` on inverted digits with
    input.intensity at PSI 1.2; unsorted edges binned garbage; a reference of features this agent does not
    compute (or per-box ones only) raised in max() on every frame once the window was full."""
    from edge_agent.bundle import REFERENCE_STATS_FILE
    from edge_agent.monitor.watch import load_reference

    _, _, x_test, _ = split
    good = json.loads(digits_ref.to_json())
    nan_share = json.loads(json.dumps(good))
    nan_share["features"]["input.brightness"]["p"][0] = float("nan")
    unsorted = json.loads(json.dumps(good))
    unsorted["features"]["input.contrast"]["edges"].reverse()
    for damaged in (nan_share, unsorted):
        (tmp_path / REFERENCE_STATS_FILE).write_text(json.dumps(damaged))
        assert load_reference(tmp_path) is None  # logged: drift is not monitored for this model
    others = ReferenceStats.from_json(json.dumps({"schema": 1, "features": {
        "input.saturation": {"p": [0.5, 0.5], "edges": [0.1]}, "output.box_score": {"p": [0.5, 0.5], "edges": [0.5]}}}))
    for kind, state in ((None, "no_reference"), ("detection", "warming_up")):
        mon = DriftMonitor(others, "NCHW", kind=kind, config=DriftConfig(WINDOW, STRIDE))
        for i in range(WINDOW + STRIDE):
            mon.observe(1.0 - x_test[i:i + 1], None, {"detections": []})
        assert mon.snapshot().state == state


def test_converted_bundle_carries_signed_reference_statistics(int8_bundle, digits, tmp_path):
    vb = verify_bundle(int8_bundle, TrustStore.from_paths([digits.pub]))
    entry = vb.manifest.file_entry(REFERENCE_STATS_FILE)  # listed with its hash: covered by the signature
    with tarfile.open(int8_bundle) as tar:
        data = tar.extractfile(REFERENCE_STATS_FILE).read()
    assert entry.size == len(data) < 4096
    ref = ReferenceStats.from_json(data)
    assert {"input.brightness", "input.contrast", "input.intensity", "output.class", "output.confidence"} <= set(ref.features)
    assert sum(ref.features["output.class"].p) == pytest.approx(1.0, abs=1e-4)
    assert ref.summary["input_samples"] == 256 + len(digits.x_test)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=300), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=300))
def test_histograms_count_every_value_and_psi_is_never_negative(reference, live):
    h = Histogram.from_values(np.asarray(reference))
    assert h.bins == len(h.edges) + 1 <= 10 and sum(h.p) == pytest.approx(1.0, abs=1e-4)
    counts = h.counts(np.asarray(live))
    assert counts.sum() == len(live) and (counts >= 0).all()
    assert psi(h.p, counts) >= -1e-12
    assert psi(h.p, h.p) == pytest.approx(0.0, abs=1e-9)
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert (back.counts(np.asarray(live)) == counts).all()


def test_edge_agent_run_reports_drift_of_a_video_whose_scene_changes(int8_bundle, digits, digits_video,
                                                                     scene_change_video, capsys):
    """`edge-agent run --source` (the plain camera pipeline) scores drift too: in its JSON summary. Every frame
    (`--drift-budget all`): these videos are as long as a window or two (the default samples: test below)."""
    from edge_agent.cli import main

    summaries = {}
    for name, video in (("same", digits_video), ("changed", scene_change_video)):
        code = main(["run", str(int8_bundle), "--source", str(video), "--trust", str(digits.pub), "--output", "none",
                     "--drift-window", "100", "--drift-budget", "all", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        summaries[name] = json.loads(out)["drift"]
    assert summaries["same"]["state"] == "ok" and summaries["same"]["frames"] == 100
    assert summaries["same"]["live"]["not_sampled"] == 0
    assert summaries["changed"]["state"] == "drift" and summaries["changed"]["psi"]["input.brightness"] > 1.0


def test_a_1000_class_model_keeps_ten_class_bins_so_a_small_window_is_not_drift_by_chance():
    rng = np.random.default_rng(0)
    reference = rng.zipf(1.5, 5000) % 1000  # a long tail, as a 1000-class model's answers on real scenes
    h = Histogram.from_values(reference, categories=1000)
    assert h.bins == 10 and len(h.keys) == 9 and h.keys == sorted(h.keys)
    assert sum(h.p) == pytest.approx(1.0, abs=1e-4) and h.p[-1] > 0  # the `other` bin holds the tail
    live = rng.zipf(1.5, 200) % 1000  # the same scene, 200 frames
    assert psi(h.p, h.counts(live)) < 0.25
    assert h.counts(np.asarray([999999]))[-1] == 1  # an index the reference never saw goes to `other`


def test_the_cpu_budget_samples_fast_inputs_and_takes_every_slow_one():
    """Drift on a tiny model's served requests must not cost 10 % of each request: the monitor observes a
    uniform sample within 2 % of a core. Each observation here burns 1 ms of this thread's CPU."""
    import time

    from edge_agent.monitor.budget import CpuBudget

    def burn() -> None:
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass

    now = [0.0]
    fast = CpuBudget(share=0.02, clock=lambda: now[0])
    for _ in range(300):  # an input every 2 ms: 0.04 ms of budget each
        now[0] += 0.002
        fast.run(burn)
    assert fast.run_count + fast.skipped == 300
    assert fast.run_count <= 30 and fast.skipped >= 270  # ~(2 ms burst + 300 x 0.04 ms) / 1 ms
    slow = CpuBudget(share=0.02, clock=lambda: now[0])
    for _ in range(50):  # a camera at 10 fps: 2 ms of budget per frame, more than an observation costs
        now[0] += 0.1
        slow.run(burn)
    assert (slow.run_count, slow.skipped) == (50, 0)


def test_one_observation_dearer_than_the_bucket_does_not_stop_the_monitor_for_good():
    """One observation that cost more than the bucket holds (a GC pause inside it; every one of them on a
    slow board) used to lock the monitor out: it waited for tokens the capped bucket never holds, so the
    drift state stayed `warming_up` for the rest of the process. Now it pays the debt back at its share."""
    import time

    from edge_agent.monitor.budget import BURST_S, CpuBudget

    def burn(seconds: float):
        def fn() -> None:
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass
        return fn

    now = [0.0]
    budget = CpuBudget(share=0.02, clock=lambda: now[0])
    assert budget.run(burn(5 * BURST_S))  # 10 ms of CPU: the estimate is now 5x the bucket
    ran = 0
    for _ in range(40):  # 40 s at 10 fps, 1 ms observations: the 10 ms debt is paid back in about 0.5 s
        for _ in range(10):
            now[0] += 0.1
            ran += budget.run(burn(0.001))
    assert ran >= 200  # ~0.02 x 40 s / 1 ms = 800 at most; before: 0
    slow = CpuBudget(share=0.02, clock=lambda: now[0])  # a board where every observation costs 4 ms
    for _ in range(100):  # 100 s at 1 fps: 20 ms of budget a second
        now[0] += 1.0
        slow.run(burn(0.004))
    assert slow.run_count == 100 and slow.skipped == 0


def test_the_plain_pipelines_budget_is_a_share_of_the_inference_time_not_of_the_clock(digits_ref, split):
    """`edge-agent run --source` observes frames within 1 % of the model's inference time (LiveSample.latency_ms),
    however much wall time passes: a model that costs nothing buys no statistics beyond the first burst, a slow
    one gets every frame observed; `--drift-budget all` (share None) observes every frame whatever it costs."""
    from edge_agent.monitor.watch import PipelineDrift
    from edge_agent.pipeline.observe import LiveSample

    _, _, x_test, _ = split

    def fed(share: float | None, latency_ms: float, n: int = 300) -> PipelineDrift:
        drift = PipelineDrift(DriftMonitor(digits_ref, "NCHW", kind=None, config=DriftConfig(WINDOW, STRIDE)), share)
        for i in range(n):
            drift(LiveSample(None, None, {"x": x_test[i:i + 1]}, [], latency_ms))
        return drift

    slow = fed(0.01, 1000.0)  # 10 ms of budget per frame: far more than an observation costs
    assert slow.not_sampled == 0 and slow.snapshot().frames == WINDOW
    free = fed(0.01, 0.0)  # no inference time at all: the burst (2 ms of CPU) is all there is
    assert free.budget.run_count + free.not_sampled == 300 and free.not_sampled > 150
    assert free.snapshot().live["not_sampled"] == free.not_sampled
    every = fed(None, 0.0)
    assert every.not_sampled == 0 and every.snapshot().state == "ok"
