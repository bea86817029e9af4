"""Do two models give the same answer on one frame? Per postprocess kind, from the pipeline's results.

    classification  1.0 when the top-1 labels are equal, else 0.0
    detection       matched boxes / max(boxes of either model): a match is one box of each model with
                    the same label and IoU >= `iou` (1.0 when both see nothing)
    none            nothing to compare: None (the shadow run then judges latency only)

Box matching sits behind `BoxMatcher` so a better matcher (e.g. Hungarian assignment, or the
converter's matched-box metric) can replace the greedy one without touching the shadow run.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from ..pipeline.detection import iou_one_to_many

Result = dict[str, Any]  # a Postprocessor result (edge_agent.pipeline.stages)
DEFAULT_IOU = 0.5


class BoxMatcher(Protocol):
    def matches(self, a: list[Result], b: list[Result], iou: float) -> int:
        """How many boxes of `a` pair one-to-one with a box of `b` (same label, IoU >= iou)."""


class GreedyIoUMatcher:
    """Highest-scoring boxes of `a` first, each takes the best still-free box of `b` with its label."""

    def matches(self, a: list[Result], b: list[Result], iou: float) -> int:
        if not a or not b:
            return 0
        boxes_b = np.asarray([d["box"] for d in b], dtype=np.float64)
        labels_b = np.asarray([d["label"] for d in b])
        free = np.ones(len(b), dtype=bool)
        found = 0
        for d in sorted(a, key=lambda d: -d.get("score", 0.0)):
            overlap = iou_one_to_many(np.asarray(d["box"], dtype=np.float64), boxes_b)
            overlap[~free | (labels_b != d["label"])] = -1.0
            j = int(np.argmax(overlap))
            if overlap[j] >= iou:
                free[j] = False
                found += 1
        return found


def frame_agreement(kind: str, matcher: BoxMatcher | None = None,
                    iou: float = DEFAULT_IOU) -> Callable[[Result, Result], float | None]:
    """`agree(active_result, candidate_result) -> 0..1 or None` for a postprocess kind."""
    if kind == "classification":
        return lambda a, b: 1.0 if a.get("label") == b.get("label") else 0.0
    if kind == "detection":
        m = matcher or GreedyIoUMatcher()

        def boxes(a: Result, b: Result) -> float:
            da, db = a.get("detections", []), b.get("detections", [])
            most = max(len(da), len(db))
            return 1.0 if most == 0 else m.matches(da, db, iou) / most

        return boxes
    return lambda a, b: None
