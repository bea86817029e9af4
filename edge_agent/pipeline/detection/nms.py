"""Box arithmetic shared by every decoder and by the converter's detection gate: IoU, NMS, box formats.

Vectorised: one (N, N) IoU matrix per frame instead of a Python loop over kept boxes, so NMS costs a
few numpy calls however many candidates pass the score threshold (capped by MAX_CANDIDATES).
"""

from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 2000  # best-scoring candidates NMS looks at (an IoU matrix of 2000^2 floats is 16 MB)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes a (N, 4) against b (M, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against an (N, 4) array of xyxy boxes."""
    return iou_matrix(box[None, :], boxes)[0]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first.

    The IoU matrix of the (at most MAX_CANDIDATES) best candidates is computed once; the greedy pass
    then only reads rows of it.
    """
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    if order.size == 0:
        return np.zeros(0, dtype=np.int64)
    over = iou_matrix(boxes[order], boxes[order]) > iou_threshold
    alive = np.ones(order.size, dtype=bool)
    keep: list[int] = []
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(int(order[i]))
        if max_keep is not None and len(keep) >= max_keep:
            break
        alive &= ~over[i]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_keep: int | None) -> np.ndarray:
    """Per-class NMS via the coordinate-offset trick (boxes of different classes never overlap)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offset = classes.astype(np.float32)[:, None] * (float(np.abs(boxes).max()) + 1.0)
    return nms(boxes + offset, scores, iou_threshold, max_keep)


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """(N, 4) boxes in cxcywh | xyxy | yxyx -> xyxy float32."""
    from . import DetectionConfigError

    b = boxes.astype(np.float32)
    if box_format == "xyxy":
        return b
    if box_format == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if box_format == "cxcywh":
        half = b[:, 2:4] / 2
        return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)
    raise DetectionConfigError(f"postprocess option box_format={box_format!r}; expected cxcywh, xyxy or yxyx")


def matched_boxes(a_boxes: np.ndarray, a_scores: np.ndarray, a_classes: np.ndarray,
                  b_boxes: np.ndarray, b_classes: np.ndarray, iou: float = 0.5) -> int:
    """How many boxes of `a` pair one-to-one with a box of `b`: same class and IoU >= iou.

    Greedy, best-scoring box of `a` first, each taking the best still-free box of `b`. The one matcher
    of the project: the converter's detection gate (float vs converted boxes) and the agent's shadow run
    (active vs new model on live frames) both count matched boxes with it, so "agree" means the same.
    """
    if not len(a_boxes) or not len(b_boxes):
        return 0
    ious = iou_matrix(np.asarray(a_boxes, np.float64), np.asarray(b_boxes, np.float64))
    ious[np.asarray(a_classes)[:, None] != np.asarray(b_classes)[None, :]] = -1.0
    free = np.ones(len(b_boxes), dtype=bool)
    found = 0
    for i in np.argsort(-np.asarray(a_scores, np.float64), kind="stable"):
        row = np.where(free, ious[i], -1.0)
        j = int(row.argmax())
        if row[j] >= iou:
            free[j] = False
            found += 1
    return found
