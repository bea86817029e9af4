"""The per-frame work of each pipeline stage, behind small callables the runner threads call.

    Preprocessor:  Frame (BGR) -> Prepared (model feeds + how to map boxes back)
    Inferencer:    feeds -> outputs              (edge_agent.runtimes session.run)
    Postprocessor: outputs + geometry -> result  (classification | detection | none)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..bundle import Manifest
from ..runtimes import ModelSession
from .detection import DetectionConfigError, DetectionOptions, FrameGeometry, detect
from .inputs import InputError
from .postprocess import classify
from .preprocess import preprocess_image
from .sources import Frame


@dataclass
class Prepared:
    frame: Frame
    feeds: dict[str, np.ndarray]
    geometry: FrameGeometry
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage so far
    stale_frames: int = 0  # frames the source produced after this one, when inference started
    outputs: list[np.ndarray] | None = None


class Preprocessor:
    """BGR frames -> the bundle's first input, as its manifest's `preprocess` says."""

    def __init__(self, manifest: Manifest) -> None:
        pre = manifest.preprocess
        if pre is None or pre.kind != "image":
            raise InputError("bundle has no image preprocessing (preprocess.kind must be 'image' for camera/video input)")
        self.spec = pre
        self.tensor = manifest.inputs[0]
        self._dtype = np.float16 if self.tensor.dtype == "float16" else np.float32

    def __call__(self, frame: Frame) -> Prepared:
        # OpenCV gives BGR; preprocess_image swaps to RGB after the resize, on the small image (a full-frame
        # cvtColor cost more than the resize itself).
        tensor, box = preprocess_image(frame.image, self.spec, self.tensor, color_order="BGR")
        h, w = frame.image.shape[:2]
        geometry = FrameGeometry.from_preprocess((h, w), (self.spec.size[0], self.spec.size[1]), self.spec.resize, box)
        return Prepared(frame, {self.tensor.name: tensor.astype(self._dtype, copy=False)}, geometry)


@dataclass(frozen=True)
class FrameInput:
    """A camera/video frame as a pipeline.observe.LiveInput: preprocessed again for another model."""

    frame: Frame

    def prepare(self, manifest: Manifest) -> tuple[dict[str, np.ndarray], FrameGeometry]:
        prepared = Preprocessor(manifest)(self.frame)
        return prepared.feeds, prepared.geometry


class Postprocessor:
    """Model outputs -> a JSON-able result dict, by the manifest's postprocess kind."""

    def __init__(self, manifest: Manifest, top_k: int | None = None) -> None:
        self.manifest = manifest
        self.kind = manifest.postprocess.kind if manifest.postprocess else "classification"
        self.top_k = top_k
        self._det = DetectionOptions.from_manifest(manifest.postprocess.options) if self.kind == "detection" else None
        if self._det is not None:
            check_outputs(self._det, [t.name for t in manifest.outputs])

    def __call__(self, outputs: list[np.ndarray], geometry: FrameGeometry) -> dict[str, Any]:
        if self.kind == "classification":
            top = classify(outputs, self.manifest, self.top_k)[0]
            return {"kind": "classification", **top}
        if self.kind == "detection":
            return {"kind": "detection", "detections": detect(outputs, self.manifest, geometry, self._det)}
        return {"kind": "none", "outputs": [list(o.shape) for o in outputs]}


def check_outputs(opts: DetectionOptions, names: list[str]) -> None:
    """Refuse detection options that name outputs the model lacks, before the first frame (exit 75)."""
    roles = [opts.output] if opts.format in ("yolo", "yolo-nms") else [opts.boxes_output, opts.scores_output]
    if opts.format in ("yolo", "yolo-nms") and opts.output is None and len(names) > 1:
        raise DetectionConfigError(f"the model has {len(names)} outputs ({', '.join(names)}): name the one holding "
                                   "detections with postprocess option `output` (edge-convert --output-role)")
    for r in roles:
        if isinstance(r, str) and not r.isdigit() and r not in names:
            raise DetectionConfigError(f"detection output {r!r} is not an output of the model ({', '.join(names)})")
        if (isinstance(r, int) or (isinstance(r, str) and r.isdigit())) and int(r) >= len(names):
            raise DetectionConfigError(f"detection output {r} does not exist: the model has {len(names)}")


def detect_in_image(path: str, manifest: Manifest, session: ModelSession) -> list[dict[str, Any]]:
    """`edge-agent run BUNDLE photo.jpg` on a detection bundle: boxes in the photo's pixels."""
    from .preprocess import read_image

    pre = manifest.preprocess
    if pre is None or pre.kind != "image":
        raise InputError("detection bundles need image preprocessing to run on an image file")
    image = read_image(path)
    tensor, box = preprocess_image(image, pre, manifest.inputs[0], color_order="RGB")
    geometry = FrameGeometry.from_preprocess(image.shape[:2], (pre.size[0], pre.size[1]), pre.resize, box)
    dtype = np.float16 if manifest.inputs[0].dtype == "float16" else np.float32
    outputs = session.run({manifest.inputs[0].name: tensor.astype(dtype, copy=False)})
    opts = DetectionOptions.from_manifest(manifest.postprocess.options)
    check_outputs(opts, [t.name for t in manifest.outputs])
    return detect(outputs, manifest, geometry, opts)


def detect_in_tensor(outputs: list[np.ndarray], manifest: Manifest) -> list[dict[str, Any]]:
    """`edge-agent run BUNDLE input.npy` on a detection bundle: the boxes in model-input pixels (there is no
    photo to map them into), as the converter's gate compares them."""
    pre, spec = manifest.preprocess, manifest.inputs[0]
    if pre is not None and pre.kind == "image":
        hw = (pre.size[0], pre.size[1])
    else:
        hw = (spec.shape[2], spec.shape[3]) if spec.layout == "NCHW" else (spec.shape[1], spec.shape[2])
    opts = DetectionOptions.from_manifest(manifest.postprocess.options)
    check_outputs(opts, [t.name for t in manifest.outputs])
    return detect(outputs, manifest, FrameGeometry.identity(hw), opts)


def infer(session: ModelSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One inference with the bundle's runtime."""
    return session.run(feeds)
