"""Object-detection postprocessing: decode the model's head, score threshold, NMS, boxes back to the frame.

Options (manifest `postprocess.options` when `kind` is "detection"):

    format           yolo (default) | yolo-nms | ssd | ssd-anchors  (see decoders.py)
    score_threshold  drop detections scoring below this (default 0.25)
    iou_threshold    NMS overlap above which the lower-scoring box goes (default 0.45)
    max_detections   keep at most this many per frame after NMS (default 100)
    box_format       cxcywh (yolo default), xyxy (ssd, yolo-nms default) or yxyx (TF-style SSD)
    normalized       boxes in 0..1 of the model input (ssd default true, yolo default false: pixels)
    objectness       yolo only: rows are 4+1+C (YOLOv5) instead of 4+C; default: inferred from the label count
    row_extras       yolo only: values after the class scores to ignore (32 mask coefficients, 51 keypoints)
    class_agnostic   one NMS across classes instead of per class (default false)
    background_class ssd only: class index to ignore (e.g. 0), default none
    output           yolo / yolo-nms: the output holding the detections (name or index); required when the
                     model has several outputs
    boxes_output / scores_output   ssd / ssd-anchors: name or index (default 0 and 1)
    anchors          ssd-anchors: [[cx, cy, w, h], ...] normalised to the model input
    anchor_scale     ssd-anchors: [x, y, w, h] the regressors are divided by (default the input size)
    sigmoid          ssd-anchors: scores are logits (default true)

Boxes come back in the ORIGINAL frame's pixels as [x1, y1, x2, y2], undoing resize or letterbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...bundle import Manifest
from ...errors import AgentError
from ..preprocess import Letterbox


class DetectionConfigError(AgentError, ValueError):
    """The manifest's detection options do not fit the model's outputs."""

    code_name = "detection-config"


from .decoders import DECODERS, PREFILTERING, Candidates  # noqa: E402  (they raise DetectionConfigError)
from .nms import batched_nms, iou_matrix, iou_one_to_many, matched_boxes, nms, to_xyxy  # noqa: E402

FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "yolo": {"box_format": "cxcywh", "normalized": False},
    "yolo-nms": {"box_format": "xyxy", "normalized": False},
    "ssd": {"box_format": "xyxy", "normalized": True},
    "ssd-anchors": {"box_format": "cxcywh", "normalized": True},
}


@dataclass(frozen=True)
class FrameGeometry:
    """Maps model-input pixel coordinates back to the original frame: orig = (model - pad) / scale."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # original frame size, for clipping
    height: int
    input_width: int
    input_height: int

    @classmethod
    def from_preprocess(cls, frame_hw: tuple[int, int], input_hw: tuple[int, int], resize: str, box: Letterbox) -> "FrameGeometry":
        h, w = frame_hw
        ih, iw = input_hw
        if resize == "letterbox":
            return cls(box.scale, box.scale, box.pad_x, box.pad_y, w, h, iw, ih)
        return cls(iw / w, ih / h, 0.0, 0.0, w, h, iw, ih)

    @classmethod
    def identity(cls, input_hw: tuple[int, int]) -> "FrameGeometry":
        """Boxes stay in model-input pixels (the converter's gate compares models there)."""
        ih, iw = input_hw
        return cls(1.0, 1.0, 0.0, 0.0, iw, ih, iw, ih)

    def to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        """(K, 4) xyxy model pixels -> frame pixels, clipped to the frame (float32, per column as
        (v - pad) / scale: the same float32 operations as one column pair at a time, in 3 numpy calls)."""
        pad = np.asarray([self.pad_x, self.pad_y] * 2, dtype=np.float32)
        scale = np.asarray([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        top = np.asarray([self.width, self.height] * 2, dtype=np.float32)
        return np.minimum(np.maximum((np.asarray(xyxy, dtype=np.float32) - pad) / scale, np.float32(0)), top)


@dataclass(frozen=True)
class DetectionOptions:
    format: str = "yolo"
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    box_format: str = "cxcywh"
    normalized: bool = False
    objectness: bool | None = None
    row_extras: int = 0
    class_agnostic: bool = False
    background_class: int | None = None
    output: Any = None
    boxes_output: Any = 0
    scores_output: Any = 1
    anchors: Any = field(default_factory=list)  # an (N, 2|4) float32 array once read from a manifest
    anchor_scale: list | None = None
    sigmoid: bool = True

    @classmethod
    def from_manifest(cls, options: dict[str, Any]) -> "DetectionOptions":
        fmt = str(options.get("format", "yolo")).lower()
        if fmt not in DECODERS:
            raise DetectionConfigError(f"postprocess option format={fmt!r}; expected one of {', '.join(DECODERS)}")
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise DetectionConfigError(f"unknown detection option(s): {', '.join(sorted(unknown))}")
        m = {**FORMAT_DEFAULTS[fmt], **options, "format": fmt}
        opt = lambda key, conv, default=None: default if m.get(key) is None else conv(m[key])  # noqa: E731
        try:
            return cls(
                format=fmt,
                score_threshold=float(m.get("score_threshold", 0.25)),
                iou_threshold=float(m.get("iou_threshold", 0.45)),
                max_detections=int(m.get("max_detections", 100)),
                box_format=str(m["box_format"]),
                normalized=bool(m["normalized"]),
                objectness=opt("objectness", bool),
                row_extras=int(m.get("row_extras", 0)),
                class_agnostic=bool(m.get("class_agnostic", False)),
                background_class=opt("background_class", int),
                output=m.get("output"),
                boxes_output=m.get("boxes_output", 0),
                scores_output=m.get("scores_output", 1),
                anchors=np.asarray(m.get("anchors") or [], dtype=np.float32),  # once, not per frame (896 pairs: 0.15 ms)
                anchor_scale=opt("anchor_scale", lambda v: [float(x) for x in v]),
                sigmoid=bool(m.get("sigmoid", True)),
            )
        except (TypeError, ValueError) as exc:
            raise DetectionConfigError(f"bad detection option value: {exc}") from exc


def decode(outputs: list[np.ndarray], opts: DetectionOptions, output_names: list[str], n_labels: int | None,
           input_hw: tuple[int, int], score_floor: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final detections in model-input pixels: (boxes xyxy (K, 4), scores (K,), classes (K,)), best first.

    score_floor overrides the manifest's score threshold (the gate's mAP ranks low-scoring boxes too).
    """
    if opts.format in ("yolo", "yolo-nms") and opts.output is None and len(outputs) > 1:
        raise DetectionConfigError(f"the model has {len(outputs)} outputs ({', '.join(output_names)}): name the one "
                                   "holding detections with postprocess option `output` (edge-convert --output-role)")
    if opts.format == "ssd-anchors" and opts.anchor_scale is None:
        opts = DetectionOptions(**{**opts.__dict__, "anchor_scale": [input_hw[1], input_hw[0]] * 2})
    floor = opts.score_threshold if score_floor is None else score_floor
    decoder = DECODERS[opts.format]
    c: Candidates = (decoder(outputs, output_names, opts, n_labels, floor=floor) if decoder in PREFILTERING
                     else decoder(outputs, output_names, opts, n_labels))
    if decoder in PREFILTERING:  # every candidate already reaches the floor
        raw, scores, classes = c.boxes, c.scores, c.classes
    else:
        mask = c.scores >= floor
        raw, scores, classes = c.boxes[mask], c.scores[mask], c.classes[mask]
    boxes = to_xyxy(raw, c.box_format)
    if c.normalized:
        boxes = boxes * np.asarray([input_hw[1], input_hw[0]] * 2, dtype=np.float32)
    if c.nms_done:
        keep = np.argsort(-scores, kind="stable")[: opts.max_detections]
    elif opts.class_agnostic:
        keep = nms(boxes, scores, opts.iou_threshold, opts.max_detections)
    else:
        keep = batched_nms(boxes, scores, classes, opts.iou_threshold, opts.max_detections)
    return boxes[keep], scores[keep], classes[keep].astype(np.int64)


def detect(outputs: list[np.ndarray], manifest: Manifest, geometry: FrameGeometry, opts: DetectionOptions | None = None) -> list[dict[str, Any]]:
    """Decoded detections for one frame: [{box: [x1,y1,x2,y2] frame pixels, score, label, name}], best first."""
    opts = opts or DetectionOptions.from_manifest(manifest.postprocess.options if manifest.postprocess else {})
    labels = manifest.labels or []
    boxes, scores, classes = decode(outputs, opts, [t.name for t in manifest.outputs], len(labels) or None,
                                    (geometry.input_height, geometry.input_width))
    if not len(boxes):
        return []
    # Python floats once (tolist), then Python's round: the same numbers as rounding each numpy scalar
    return [{"box": [round(v, 2) for v in box], "score": round(s, 5), "label": c,
             "name": labels[c] if 0 <= c < len(labels) else str(c)}
            for box, s, c in zip(geometry.to_frame(boxes).tolist(), scores.tolist(), classes.tolist())]


__all__ = ["DetectionConfigError", "DetectionOptions", "FrameGeometry", "batched_nms", "decode", "detect",
           "iou_matrix", "iou_one_to_many", "matched_boxes", "nms", "to_xyxy"]
