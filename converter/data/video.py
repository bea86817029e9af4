"""Calibration / eval data from a video file: frames sampled evenly over the clip with OpenCV, each
preprocessed exactly as the bundle preprocesses images on the device.

OpenCV (opencv-python-headless) is imported lazily: the converter works without it, and only a video
source then fails, with a one-line DataError saying what to install.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.pipeline.inputs import VIDEO_SUFFIXES  # one list: what the agent plays with --source calibrates
from edge_agent.pipeline.preprocess import preprocess_image

from ..errors import DataError
from .dataset import feed_dtype, no_image_input

log = logging.getLogger(__name__)
DEFAULT_FRAMES = 256


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _cv2():
    try:
        import cv2
    except ImportError:
        raise DataError("video calibration data needs OpenCV: pip install opencv-python-headless "
                        "(or pass an .npz file or an image folder)") from None
    return cv2


def frame_indices(total: int, n: int) -> list[int]:
    """n frame numbers spread evenly over [0, total) (all frames when total <= n)."""
    if total <= 0 or n <= 0:
        return []
    if total <= n:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, n).round()})


def read_frames(path: Path, n: int = DEFAULT_FRAMES) -> list[np.ndarray]:
    """Up to n RGB uint8 frames sampled evenly over the video."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open video (unsupported codec or not a video file)")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames: list[np.ndarray] = []
        if total > 0:
            for i in frame_indices(total, n):
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                ok, frame = cap.read()
                if ok:
                    frames.append(frame)
        if not frames:  # containers without a frame count: read sequentially, keep every k-th later
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            allf = []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                allf.append(frame)
            frames = [allf[i] for i in frame_indices(len(allf), n)]
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no readable frames in the video")
    return [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]  # OpenCV decodes BGR


def load_video(path: Path, inputs: list[TensorSpec], preprocess: Preprocess | None, n: int = DEFAULT_FRAMES) -> np.ndarray:
    """(N, *input shape) float32 tensors from n evenly sampled frames, with the bundle's preprocessing."""
    if preprocess is None or preprocess.kind != "image":
        raise DataError(no_image_input(str(path), "video frames", inputs))
    if len(inputs) != 1:
        raise DataError(f"{path}: video data only works for single-input models")
    frames = read_frames(path, n)
    log.info("%s: %d frames sampled evenly for calibration/eval", path.name, len(frames))
    return np.stack([preprocess_image(f, preprocess, inputs[0])[0][0] for f in frames]).astype(feed_dtype(inputs[0]))
