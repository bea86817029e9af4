"""Helpers for the camera pipeline tests: generated videos, a constructed ONNX detector, a live source."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import Manifest, Postprocess, Preprocess, TensorSpec, load_private_key, write_bundle
from edge_agent.pipeline.sources import Frame, Source


def digit_frames(x: np.ndarray, size: int) -> list[np.ndarray]:
    """Digits (N x 1 x 8 x 8 in [0, 1]) as size x size BGR uint8 frames (nearest upscaling)."""
    frames = []
    for img in x:
        g = np.clip(np.rint(img[0] * 255.0), 0, 255).astype(np.uint8)
        g = cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)
        frames.append(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0, fourcc: str = "FFV1") -> Path:
    """Write BGR frames with OpenCV (FFV1 in .avi is lossless, so labels are exact)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} video"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from `path`, in order (BGR)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


class SyntheticLiveSource(Source):
    """A camera stand-in that produces frames at a fixed rate, like a real one (read blocks until the
    next frame time). Frames are BGR images cycling through `frames`."""

    live = True

    def __init__(self, frames: list[np.ndarray], fps: float, total: int | None = None) -> None:
        self.frames = frames
        self.fps = fps
        self.total = total
        self.description = f"synthetic camera at {fps:g} fps"
        self._count = 0
        self._t0: float | None = None

    def read(self) -> Frame | None:
        if self.total is not None and self._count >= self.total:
            return None
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._count / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = Frame(self._count, self.frames[self._count % len(self.frames)], time.monotonic())
        self._count += 1
        return frame


# --- a constructed detector ------------------------------------------------------------------


def constant_detector_onnx(path: Path, outputs: dict[str, np.ndarray], input_shape=(1, 3, 64, 64)) -> Path:
    """An ONNX model whose outputs are the given constants (+ 0 * mean(input), so the input is used)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "constant_detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_shape))], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector_bundle(tmp: Path, key: Path, outputs: dict[str, np.ndarray], options: dict, resize: str = "letterbox",
                    labels: list[str] | None = None, size: int = 64) -> Path:
    """Sign a bundle (postprocess kind detection) around a constant detector."""
    onnx_path = constant_detector_onnx(tmp / "detector.onnx", outputs, (1, 3, size, size))
    manifest = Manifest(
        name="tiny-detector", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime",
        precision="fp32", model_file="model/model.onnx",
        inputs=[TensorSpec("image", "float32", [1, 3, size, size], "NCHW")],
        outputs=[TensorSpec(n, "float32", list(v.shape)) for n, v in outputs.items()],
        preprocess=Preprocess(kind="image", color="RGB", size=[size, size], resize=resize, scale=1 / 255),
        postprocess=Postprocess(kind="detection", options=options),
        labels=labels or ["person", "car"],
    )
    out = tmp / f"detector-{resize}.edgebundle"
    return write_bundle(out, manifest, {"model/model.onnx": onnx_path}, load_private_key(key))
