"""Video-file calibration/eval data: frames sampled evenly with OpenCV, preprocessed like the bundle,
used to quantize a real PP-OCR model (RapidOCR wheel) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from converter.data import load_dataset
from converter.data.video import frame_indices
from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.pipeline.preprocess import preprocess_image
from examples import ocr_samples as ocr

cv2 = pytest.importorskip("cv2")  # pinned in the dev extra; the converter itself imports it lazily
FRAME_W, FRAME_H = 384, 96
PREPROCESS = ["--color", "BGR", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]


def _write_clip(path: Path, frames: int, seed: int) -> list[np.ndarray]:
    """A camera-like pan over real scanned text (scikit-image page.png / text.png); every other
    frame upside down, as a direction classifier sees. Returns the frames written (BGR)."""
    rng = np.random.default_rng(seed)
    sources = ocr.text_images()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (FRAME_W, FRAME_H))
    assert writer.isOpened()
    written = []
    for i in range(frames):
        img = sources[i % len(sources)]
        h = int(rng.integers(img.shape[0] // 12, img.shape[0] // 6))
        w = min(img.shape[1], 4 * h)
        y0, x0 = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w + 1))
        frame = cv2.resize(img[y0 : y0 + h, x0 : x0 + w], (FRAME_W, FRAME_H), interpolation=cv2.INTER_AREA)
        if i % 2:
            frame = frame[::-1, ::-1]
        frame = np.ascontiguousarray(frame)
        writer.write(frame)
        written.append(frame)
    writer.release()
    return written


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    _write_clip(folder / "calib.mp4", 90, seed=1)
    _write_clip(folder / "eval.mp4", 60, seed=2)
    return folder


def test_frames_sampled_evenly_and_preprocessed_like_the_bundle(clips):
    assert frame_indices(90, 4) == [0, 30, 59, 89]
    assert frame_indices(5, 10) == [0, 1, 2, 3, 4]
    spec = TensorSpec(name="x", dtype="float32", shape=[1, 3, 48, 192], layout="NCHW")
    pre = Preprocess(kind="image", color="BGR", size=[48, 192], resize="bilinear", scale=1 / 255,
                     mean=[0.5] * 3, std=[0.5] * 3)
    data = load_dataset(clips / "calib.mp4", [spec], pre, max_frames=4)
    x = data.inputs["x"]
    assert x.shape == (4, 3, 48, 192) and x.dtype == np.float32 and data.labels is None
    # the same frames decoded independently (sequential read), through the agent's preprocessing
    from .camera_helpers import read_video

    decoded = read_video(clips / "calib.mp4")
    assert len(decoded) == 90
    for row, i in zip(x, [0, 30, 59, 89]):
        want = preprocess_image(np.ascontiguousarray(decoded[i][:, :, ::-1]), pre, spec)[0][0]
        np.testing.assert_allclose(row, want, atol=1e-6)
    assert -1.0 <= x.min() < 0 < x.max() <= 1.0  # BGR, (x/255 - 0.5)/0.5 as PP-OCR expects
    assert not np.allclose(x[0], x[1])


def test_real_ocr_model_quantized_from_video(clips, tmp_path):
    from edge_agent.bundle import generate_keypair

    key = generate_keypair(tmp_path / "keys")[0]
    out = tmp_path / "cls.edgebundle"
    rc = main(["-q", "convert", str(ocr.model_path("cls")), "--input-shape", "1x3x48x192", "--profile", "raspberry-pi-4",
               "--calibration", str(clips / "calib.mp4"), "--eval", str(clips / "eval.mp4"), *PREPROCESS,
               "--calibration-samples", "48", "--calibration-method", "percentile:99.99",
               "--accuracy-budget", "agreement:0.8", "--max-float-layers", "0", "--key", str(key), "--out", str(out),
               "--bench-runs", "3", "--min-speedup", "0"])
    assert rc == 0
    report = json.loads(Path(str(out) + ".report.json").read_text())
    q = next(p for p in report["passes"] if p["pass"] == "quantize")
    assert q["calibration_samples"] == 48  # 48 of the 90 frames, spread over the clip
    # percentile calibration wants >= 64 samples: the report (and log) says so
    assert "only 48 calibration samples" in q["calibration_warning"]
    acc = report["measurements"]["accuracy"]
    assert acc["samples"] == 48  # eval clip: 48 of its 60 frames
    assert acc["top1_agreement"] >= 0.8  # float vs int8 on held-out real text frames


def test_unreadable_video_is_a_clear_data_error(clips, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    from edge_agent.bundle import generate_keypair

    key = generate_keypair(tmp_path / "keys")[0]
    rc = main(["convert", str(ocr.model_path("cls")), "--input-shape", "1x3x48x192", "--profile", "raspberry-pi-4",
               "--calibration", str(bad), *PREPROCESS, "--key", str(key), "--out", str(tmp_path / "x.edgebundle")])
    assert rc == 22
    err = capsys.readouterr().err.strip().splitlines()
    assert any("broken.mp4" in line and "video" in line for line in err)
    assert not (tmp_path / "x.edgebundle").exists()
