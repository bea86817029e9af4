"""Detection heads users bring, each decoded into candidate boxes, scores and classes (before NMS).

    yolo         (1, 4+C, N) or (1, N, 4+C): YOLOv8/v11 (no objectness) and (1, N, 5+C) YOLOv5 (objectness)
    yolo-nms     NMS already in the graph: (1, K, 6) rows x1, y1, x2, y2, score, class (Ultralytics end2end,
                 YOLOv10, TF/ONNX exports with NMS); boxes are final, no NMS is run again
    ssd          two outputs, decoded boxes (N, 4) and class scores (N, C)
    ssd-anchors  raw regressors (N, 4+) and logits (N, 1|C) with anchors recorded in the manifest
                 (BlazeFace / MediaPipe SSD style): box = anchor + regressor / anchor_scale

Each decoder names the outputs it reads (`output`, `boxes_output`, `scores_output`: an output name or
index); a multi-output model is never silently read from output 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import DetectionConfigError


@dataclass(frozen=True)
class Candidates:
    boxes: np.ndarray  # (N, 4) in the decoder's box_format, model pixels or normalised (see `normalized`)
    scores: np.ndarray  # (N,)
    classes: np.ndarray  # (N,) int
    box_format: str
    normalized: bool
    nms_done: bool = False


def pick(outputs: list[np.ndarray], names: list[str], which: Any, role: str) -> np.ndarray:
    """The output named (or numbered) `which` (None: the only output); a one-line error naming the outputs there are."""
    which = 0 if which is None else which
    if isinstance(which, str) and not which.lstrip("-").isdigit():
        if which not in names:
            raise DetectionConfigError(f"{role} output {which!r} is not an output of the model ({', '.join(names)})")
        return np.asarray(outputs[names.index(which)])
    i = int(which)
    if not -len(outputs) <= i < len(outputs):
        raise DetectionConfigError(f"{role} output {i} does not exist: the model has {len(outputs)} ({', '.join(names)})")
    return np.asarray(outputs[i])


def _rows(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        if a.shape[0] != 1:
            raise DetectionConfigError(f"{what} output has batch {a.shape[0]}; the agent runs one frame at a time")
        a = a[0]
    if a.ndim != 2:
        raise DetectionConfigError(f"{what} output has shape {tuple(a.shape)}; expected (1, N, K) or (N, K)")
    return a


def yolo(outputs: list[np.ndarray], names: list[str], opts: Any, n_labels: int | None,
         floor: float | None = None) -> Candidates:
    """YOLO rows; with `floor`, only anchors whose best class reaches it (the common case: a few of 2100-8400),
    read in the output's own layout: (4+C, N) heads are never transposed whole, classes are argmax-ed only there."""
    a = _rows(pick(outputs, names, opts.output, "yolo"), "yolo")
    channels_first = a.shape[0] < a.shape[1]  # (4+C, N): YOLOv8/v11 exports
    attrs = a.shape[0] if channels_first else a.shape[1]
    objectness = opts.objectness
    if objectness is None:
        objectness = bool(n_labels) and attrs == 5 + n_labels
    first = 5 if objectness else 4
    end = attrs - opts.row_extras  # mask coefficients (segment) or keypoints (pose) follow the class scores
    if end <= first:
        raise DetectionConfigError(f"yolo rows have {attrs} values; need 4 box values{' + objectness' if objectness else ''}"
                                   " + classes")
    if n_labels and end - first != n_labels:
        raise DetectionConfigError(f"yolo rows hold {end - first} class scores but the bundle names {n_labels} classes"
                                   " (set postprocess option objectness or row_extras, or fix the labels)")
    t = a if channels_first else a.T  # (attrs, N) view
    cls = t[first:end]
    if objectness:
        cls = cls * t[4]
    if floor is not None:
        keep = np.flatnonzero(cls.max(axis=0) >= floor)
        cls, boxes = cls[:, keep], t[:4, keep]
    else:
        boxes = t[:4]
    classes = np.argmax(cls, axis=0)
    scores = cls[classes, np.arange(cls.shape[1])]
    return Candidates(np.ascontiguousarray(boxes.T), scores, classes, opts.box_format, opts.normalized)


def yolo_nms(outputs: list[np.ndarray], names: list[str], opts: Any, n_labels: int | None) -> Candidates:
    a = _rows(pick(outputs, names, opts.output, "yolo-nms"), "yolo-nms")
    if a.shape[1] < 6:
        raise DetectionConfigError(f"yolo-nms rows have {a.shape[1]} values; expected x1, y1, x2, y2, score, class")
    return Candidates(a[:, :4], a[:, 4], a[:, 5].astype(np.int64), opts.box_format, opts.normalized, nms_done=True)


def ssd(outputs: list[np.ndarray], names: list[str], opts: Any, n_labels: int | None) -> Candidates:
    boxes = pick(outputs, names, opts.boxes_output, "ssd boxes").astype(np.float32)
    sc = pick(outputs, names, opts.scores_output, "ssd scores").astype(np.float32)
    try:
        boxes = boxes.reshape(-1, boxes.shape[-1])[:, :4]
        sc = sc.reshape(boxes.shape[0], -1)
    except ValueError as exc:
        raise DetectionConfigError(f"ssd needs boxes (N x 4) and scores (N x C) for the same N: {exc}") from exc
    if opts.background_class is not None and 0 <= opts.background_class < sc.shape[1]:
        sc = sc.copy()
        sc[:, opts.background_class] = -np.inf
    classes = np.argmax(sc, axis=1)
    scores = np.take_along_axis(sc, classes[:, None], axis=1)[:, 0]
    return Candidates(boxes, scores, classes, opts.box_format, opts.normalized)


def ssd_anchors(outputs: list[np.ndarray], names: list[str], opts: Any, n_labels: int | None) -> Candidates:
    anchors = np.asarray(opts.anchors, dtype=np.float32)
    if anchors.ndim != 2 or anchors.shape[1] not in (2, 4):
        raise DetectionConfigError("ssd-anchors needs postprocess option anchors: a list of [cx, cy] or [cx, cy, w, h] "
                                   "(normalised to the model input)")
    if anchors.shape[1] == 2:
        anchors = np.concatenate([anchors, np.ones_like(anchors)], axis=1)
    reg = pick(outputs, names, opts.boxes_output, "ssd-anchors regressors").astype(np.float32)
    logits = pick(outputs, names, opts.scores_output, "ssd-anchors scores").astype(np.float32)
    n = anchors.shape[0]
    if reg.size % n or logits.size % n:
        raise DetectionConfigError(f"ssd-anchors: {n} anchors in the manifest but the outputs hold {reg.shape} "
                                   f"regressors and {logits.shape} scores")
    reg, logits = reg.reshape(n, -1), logits.reshape(n, -1)
    sx, sy, sw, sh = (float(v) for v in opts.anchor_scale)
    cx = reg[:, 0] / sx * anchors[:, 2] + anchors[:, 0]
    cy = reg[:, 1] / sy * anchors[:, 3] + anchors[:, 1]
    w = reg[:, 2] / sw * anchors[:, 2]
    h = reg[:, 3] / sh * anchors[:, 3]
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80))) if opts.sigmoid else logits
    classes = np.argmax(probs, axis=1)
    scores = np.take_along_axis(probs, classes[:, None], axis=1)[:, 0]
    return Candidates(np.stack([cx, cy, w, h], axis=1), scores, classes, "cxcywh", True)


DECODERS: dict[str, Callable[..., Candidates]] = {
    "yolo": yolo, "yolo-nms": yolo_nms, "ssd": ssd, "ssd-anchors": ssd_anchors,
}
PREFILTERING = (yolo,)  # decoders that take `floor=` and drop candidates below it before the per-anchor work
