"""Object-detection postprocessing: YOLO- and SSD-style outputs, score threshold, NMS, box mapping.

Options (manifest `postprocess.options` when `kind` is "detection"):

    format           "yolo" (default) or "ssd"
    score_threshold  drop detections scoring below this (default 0.25)
    iou_threshold    NMS overlap above which the lower-scoring box goes (default 0.45)
    max_detections   keep at most this many per frame after NMS (default 100)
    box_format       "cxcywh" (yolo default), "xyxy" (ssd default) or "yxyx" (TF-style SSD)
    normalized       boxes in 0..1 of the model input (ssd default true, yolo default false: pixels)
    objectness       yolo only: true if rows are 4+1+C (box, objectness, classes), false for 4+C;
                     default: inferred from the label count, else false (YOLOv8 style)
    class_agnostic   one NMS across classes instead of per class (default false)
    background_class ssd only: class index to ignore (e.g. 0), default none
    boxes_output / scores_output  ssd only: output index (default 0 and 1)

YOLO outputs are (1, N, 4+[1]+C) or (1, 4+[1]+C, N) (the smaller axis is taken as attributes).
Boxes come back in the ORIGINAL frame's pixels as [x1, y1, x2, y2], undoing resize or letterbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import Manifest
from .preprocess import Letterbox
from ..errors import AgentError


class DetectionConfigError(AgentError, ValueError):
    """The manifest's detection options do not fit the model's outputs."""

    code_name = "detection-config"


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

    def to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, [0, 2]] = (xyxy[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (xyxy[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.height)
        return out


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against an (N, 4) array of xyxy boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_keep: int | None) -> np.ndarray:
    """Per-class NMS via the coordinate-offset trick (boxes of different classes never overlap)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    return nms(boxes + offset, scores, iou_threshold, max_keep)


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    b = boxes.astype(np.float32)
    if box_format == "xyxy":
        return b
    if box_format == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if box_format == "cxcywh":
        out = np.empty_like(b)
        out[:, 0] = b[:, 0] - b[:, 2] / 2
        out[:, 1] = b[:, 1] - b[:, 3] / 2
        out[:, 2] = b[:, 0] + b[:, 2] / 2
        out[:, 3] = b[:, 1] + b[:, 3] / 2
        return out
    raise DetectionConfigError(f"postprocess option box_format={box_format!r}; expected cxcywh, xyxy or yxyx")


@dataclass(frozen=True)
class DetectionOptions:
    format: str = "yolo"
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    box_format: str = "cxcywh"
    normalized: bool = False
    objectness: bool | None = None
    class_agnostic: bool = False
    background_class: int | None = None
    boxes_output: int = 0
    scores_output: int = 1

    @classmethod
    def from_manifest(cls, options: dict[str, Any]) -> "DetectionOptions":
        fmt = str(options.get("format", "yolo")).lower()
        if fmt not in ("yolo", "ssd"):
            raise DetectionConfigError(f"postprocess option format={fmt!r}; expected yolo or ssd")
        known = set(cls.__dataclass_fields__)
        unknown = set(options) - known
        if unknown:
            raise DetectionConfigError(f"unknown detection option(s): {', '.join(sorted(unknown))}")
        defaults = {"box_format": "cxcywh", "normalized": False} if fmt == "yolo" else {"box_format": "xyxy", "normalized": True}
        merged = {**defaults, **options, "format": fmt}
        try:
            return cls(
                format=fmt,
                score_threshold=float(merged.get("score_threshold", 0.25)),
                iou_threshold=float(merged.get("iou_threshold", 0.45)),
                max_detections=int(merged.get("max_detections", 100)),
                box_format=str(merged["box_format"]),
                normalized=bool(merged["normalized"]),
                objectness=None if merged.get("objectness") is None else bool(merged["objectness"]),
                class_agnostic=bool(merged.get("class_agnostic", False)),
                background_class=None if merged.get("background_class") is None else int(merged["background_class"]),
                boxes_output=int(merged.get("boxes_output", 0)),
                scores_output=int(merged.get("scores_output", 1)),
            )
        except (TypeError, ValueError) as exc:
            raise DetectionConfigError(f"bad detection option value: {exc}") from exc


def _yolo_candidates(out: np.ndarray, opts: DetectionOptions, n_labels: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(out, dtype=np.float32)
    if a.ndim == 3:
        a = a[0]
    if a.ndim != 2:
        raise DetectionConfigError(f"yolo output has shape {tuple(out.shape)}; expected (1, N, 4+C) or (1, 4+C, N)")
    if a.shape[0] < a.shape[1]:
        a = a.T  # (4+C, N) -> (N, 4+C)
    attrs = a.shape[1]
    objectness = opts.objectness
    if objectness is None:
        objectness = bool(n_labels) and attrs == 5 + n_labels
    first_class = 5 if objectness else 4
    if attrs <= first_class:
        raise DetectionConfigError(f"yolo rows have {attrs} values; need 4 box values{' + objectness' if objectness else ''} + classes")
    cls_scores = a[:, first_class:]
    if objectness:
        cls_scores = cls_scores * a[:, 4:5]
    classes = np.argmax(cls_scores, axis=1)
    scores = cls_scores[np.arange(len(a)), classes]
    return a[:, :4], scores, classes


def _ssd_candidates(outputs: list[np.ndarray], opts: DetectionOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        boxes = np.asarray(outputs[opts.boxes_output], dtype=np.float32).reshape(-1, 4)
        sc = np.asarray(outputs[opts.scores_output], dtype=np.float32)
    except (IndexError, ValueError) as exc:
        raise DetectionConfigError(f"ssd needs a boxes output (N x 4) and a scores output (N x C): {exc}") from exc
    sc = sc.reshape(boxes.shape[0], -1)
    if opts.background_class is not None and 0 <= opts.background_class < sc.shape[1]:
        sc = sc.copy()
        sc[:, opts.background_class] = -np.inf
    classes = np.argmax(sc, axis=1)
    scores = sc[np.arange(len(sc)), classes]
    return boxes, scores, classes


def detect(outputs: list[np.ndarray], manifest: Manifest, geometry: FrameGeometry, opts: DetectionOptions | None = None) -> list[dict[str, Any]]:
    """Decoded detections for one frame: [{box: [x1,y1,x2,y2] frame pixels, score, label, name}], best first."""
    opts = opts or DetectionOptions.from_manifest(manifest.postprocess.options if manifest.postprocess else {})
    labels = manifest.labels or []
    if opts.format == "yolo":
        raw, scores, classes = _yolo_candidates(outputs[0], opts, len(labels) or None)
    else:
        raw, scores, classes = _ssd_candidates(outputs, opts)
    mask = scores >= opts.score_threshold
    raw, scores, classes = raw[mask], scores[mask], classes[mask]
    boxes = to_xyxy(raw, opts.box_format)
    if opts.normalized:
        boxes = boxes * np.asarray([geometry.input_width, geometry.input_height] * 2, dtype=np.float32)
    if opts.class_agnostic:
        keep = nms(boxes, scores, opts.iou_threshold, opts.max_detections) if boxes.size else np.zeros(0, dtype=np.int64)
    else:
        keep = batched_nms(boxes, scores, classes, opts.iou_threshold, opts.max_detections)
    mapped = geometry.to_frame(boxes[keep]) if keep.size else np.zeros((0, 4), np.float32)
    results = []
    for box, i in zip(mapped, keep):
        c = int(classes[i])
        results.append({
            "box": [round(float(v), 2) for v in box],
            "score": round(float(scores[i]), 5),
            "label": c,
            "name": labels[c] if 0 <= c < len(labels) else str(c),
        })
    return results
