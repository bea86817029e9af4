"""Do two models give the same answer on one frame? Per postprocess kind, from the pipeline's results.

    classification  1.0 when the top-1 classes are equal, else 0.0
    detection       matched boxes / max(boxes of either model): a match is one box of each model with
                    the same class and IoU >= `iou` (1.0 when both see nothing)
    none            nothing to compare: None (the shadow run then judges the new model's errors only)

A class is its label name when both models have labels (a retrained model that added a class, or ordered
them anew, numbers them differently: by index it "disagreed" on every frame, and a swapped pair agreed),
else its index.

Box matching sits behind `BoxMatcher`; the default counts matches with
edge_agent.pipeline.detection.matched_boxes, the same code as the converter's detection gate, so
"the new model agrees" on the device means what "the converted model agrees" meant at conversion.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from ..pipeline.detection import matched_boxes

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
        return matched_boxes(np.asarray([d["box"] for d in a], np.float64), [d.get("score", 0.0) for d in a],
                             [d["label"] for d in a], np.asarray([d["box"] for d in b], np.float64),
                             [d["label"] for d in b], iou)


def frame_agreement(kind: str, matcher: BoxMatcher | None = None, iou: float = DEFAULT_IOU,
                    by_name: bool = False) -> Callable[[Result, Result], float | None]:
    """`agree(active_result, candidate_result) -> 0..1 or None` for a postprocess kind. `by_name`: classes are
    compared by their label names (both models have labels: a retrained model may number them differently)."""
    key = "name" if by_name else "label"
    if kind == "classification":
        return lambda a, b: 1.0 if a.get(key) == b.get(key) else 0.0
    if kind == "detection":
        m = matcher or GreedyIoUMatcher()

        def boxes(a: Result, b: Result) -> float:
            da, db = a.get("detections", []), b.get("detections", [])
            most = max(len(da), len(db))
            if by_name:
                da, db = ([{**d, "label": d.get("name")} for d in ds] for ds in (da, db))
            return 1.0 if most == 0 else m.matches(da, db, iou) / most

        return boxes
    return lambda a, b: None
