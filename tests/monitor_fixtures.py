"""Shared pieces of the shadow/drift tests: a digits model trained on white-background digits (a real
domain shift: black ink on white paper), and videos of real digits. Test modules import them by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples import digits_cnn

from .camera_helpers import digit_frames, write_video

FRAME = 8  # video frames at the digits' own 8x8: preprocessing gives back the data the reference was made from


@pytest.fixture(scope="session")
def white_digits_bundle(digits, tmp_path_factory) -> Path:
    """digits v3: the same network trained on white-background digits (1 - x), converted and signed.

    It passes its own self-test and health check (recorded on white-background digits), but on a
    camera that shows black-background digits it answers differently from v1: what a shadow run is for.
    """
    from converter.cli import main

    folder = tmp_path_factory.mktemp("white-digits")
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    model = digits_cnn.train(1.0 - x_train, y_train, epochs=10)
    onnx = digits_cnn.export_onnx(model, folder / "digits.onnx")
    calib = digits_cnn.save_data(folder / "calib.npz", 1.0 - x_train[:256])
    evaluation = digits_cnn.save_data(folder / "eval.npz", 1.0 - x_test, y_test)
    out = folder / "digits-white-v3.edgebundle"
    assert main(["--quiet", "convert", str(onnx), "--profile", "raspberry-pi-4", "--calibration", str(calib),
                 "--eval", str(evaluation), "--key", str(digits.key), "--out", str(out), "--labels",
                 str(digits.labels_file), "--bench-runs", "5", "--min-speedup", "0", "--model-version", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def digits_video(digits, tmp_path_factory) -> Path:
    """120 held-out digits as a 30 fps video (black background, as the models were trained)."""
    return write_video(tmp_path_factory.mktemp("digits-video") / "digits.avi", digit_frames(digits.x_test[:120], FRAME))


@pytest.fixture(scope="session")
def scene_change_video(digits, tmp_path_factory) -> Path:
    """The camera's scene changes half way: the same digits, then on white paper (inverted)."""
    x = digits.x_test[:120]
    frames = digit_frames(x, FRAME) + digit_frames(np.ascontiguousarray(1.0 - x), FRAME)
    return write_video(tmp_path_factory.mktemp("scene-video") / "scene-change.avi", frames)
