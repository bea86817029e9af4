"""The detection gate: a converted detector's boxes against the float model's (and against ground truth).

Both models' outputs go through the agent's own decoder (edge_agent.pipeline.detection.decode, the
manifest's options), so the gate scores exactly the boxes the device will draw:

    matched boxes    pairs with IoU >= 0.5 and the same class (greedy, best score first), each box used once:
                     edge_agent.pipeline.detection.matched_boxes, the matcher the agent's shadow run uses
    lost / extra     float boxes (score >= the manifest's threshold) the converted model does not give, and
                     converted boxes float does not give; a box counts as given down to BORDERLINE below the
                     threshold, so a score of 0.26 vs 0.24 around a 0.25 threshold is not a lost box
    agreement        (float boxes - lost) / (float boxes + extra): lost AND extra boxes both count
    mAP@0.5          VOC all-point AP per class, averaged; vs float (float's boxes as truth) and, when labels
                     are given, of both models vs the labels (the budget limits the drop in points)

Small interface for other passes (issue 15 reuses it): DetectionScorer(...)(reference, candidate) -> score
dict with the keys converter.accuracy.metrics.score returns (agreement, metric, error, mean_cosine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.pipeline.detection import DetectionOptions, decode, iou_matrix, matched_boxes

MATCH_IOU = 0.5
MAP_SCORE_FLOOR = 0.001  # mAP ranks every box down to this score (COCO/Ultralytics convention)
DEFAULT_MIN_MATCH = 0.95  # detection agreement budget when the user gives none
BORDERLINE = 0.05  # score band under the threshold in which a box still counts as given (see module doc)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes xyxy (K, 4), scores (K,), classes (K,)


def match(ref: Detections, cand: Detections, iou: float = MATCH_IOU) -> int:
    """Matched pairs: IoU >= iou, same class, candidate boxes best score first, each box used once."""
    (rb, _, rc), (cb, cs, cc) = ref, cand
    return matched_boxes(cb, cs, cc, rb, rc, iou)


def average_precision(truth: list[tuple[np.ndarray, np.ndarray]], preds: list[Detections], iou: float = MATCH_IOU) -> float:
    """mAP@iou over the classes present in `truth` (per image: boxes, classes); VOC all-point interpolation."""
    classes = sorted({int(c) for _, tc in truth for c in tc})
    if not classes:
        return 1.0 if not any(len(p[0]) for p in preds) else 0.0
    aps = []
    for c in classes:
        n_truth = sum(int((tc == c).sum()) for _, tc in truth)
        rows: list[tuple[float, int]] = []  # (score, true positive)
        for (tb, tc), (pb, ps, pc) in zip(truth, preds):
            gt = tb[tc == c]
            sel = np.where(pc == c)[0]
            sel = sel[np.argsort(-ps[sel], kind="stable")]
            used = np.zeros(len(gt), dtype=bool)
            ious = iou_matrix(pb[sel], gt) if len(gt) and len(sel) else np.zeros((len(sel), 0))
            for k, i in enumerate(sel):
                hit = 0
                if len(gt):
                    row = np.where(used, 0.0, ious[k])
                    j = int(row.argmax())
                    if row[j] >= iou:
                        used[j], hit = True, 1
                rows.append((float(ps[i]), hit))
        if not rows:
            aps.append(0.0)
            continue
        rows.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in rows])
        fp = np.cumsum([1 - r[1] for r in rows])
        recall = tp / max(n_truth, 1)
        precision = tp / np.maximum(tp + fp, 1e-9)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum()))
    return float(np.mean(aps))


@dataclass
class DetectionScorer:
    """Scores a converted detector's outputs against the float model's, on the same eval samples.

    options: the manifest's postprocess options; ground_truth: per sample (boxes xyxy in model-input
    pixels, classes), or None.
    """

    options: dict[str, Any]
    output_names: list[str]
    n_labels: int | None
    input_hw: tuple[int, int]
    ground_truth: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        self.opts = DetectionOptions.from_manifest(self.options)

    def detections(self, outputs: list[np.ndarray], floor: float | None = None) -> list[Detections]:
        """Decoded boxes per sample (outputs: one stacked array per model output, first axis = sample)."""
        return [decode([o[i : i + 1] for o in outputs], self.opts, self.output_names, self.n_labels, self.input_hw, floor)
                for i in range(len(outputs[0]))]

    def __call__(self, reference: list[np.ndarray], candidate: list[np.ndarray], labels: Any = None) -> dict[str, Any]:
        thr = self.opts.score_threshold
        floor = max(thr - BORDERLINE, MAP_SCORE_FLOOR)
        ref_lo, cand_lo = self.detections(reference, floor), self.detections(candidate, floor)
        ref, cand = [_above(d, thr) for d in ref_lo], [_above(d, thr) for d in cand_lo]
        cand_ranked = self.detections(candidate, MAP_SCORE_FLOOR)
        n_ref, n_cand = sum(len(r[0]) for r in ref), sum(len(c[0]) for c in cand)
        matched = sum(match(r, c) for r, c in zip(ref, cand))
        lost = n_ref - sum(match(r, c) for r, c in zip(ref, cand_lo))
        extra = n_cand - sum(match(c, r) for r, c in zip(ref_lo, cand))
        agreement = (n_ref - lost) / (n_ref + extra) if n_ref + extra else 1.0
        map_float = average_precision([(r[0], r[2]) for r in ref], cand_ranked)
        s: dict[str, Any] = {
            "agreement": round(agreement, 6), "metric": f"box_match_iou>={MATCH_IOU}",
            "float_boxes": n_ref, "converted_boxes": n_cand, "matched_boxes": matched, "lost_boxes": lost,
            "extra_boxes": extra, "matched_share_of_float": round(matched / n_ref, 6) if n_ref else 1.0,
            "map50_vs_float": round(map_float, 6),
            "score_threshold": thr, "borderline": BORDERLINE,
            # continuous tie-breaker for searches (calibration method, layer ranking): lower is better
            "error": round(1.0 - map_float + (1.0 - agreement), 8),
            "mean_cosine": round(_served_cosine(reference, candidate, self.served_index()), 6),
        }
        if self.ground_truth is not None:
            ref_ranked = self.detections(reference, MAP_SCORE_FLOOR)
            f, q = average_precision(self.ground_truth, ref_ranked), average_precision(self.ground_truth, cand_ranked)
            s.update(float_map50=round(f, 6), converted_map50=round(q, 6), map50_drop_points=round(100 * (f - q), 4),
                     labelled_boxes=sum(len(b) for b, _ in self.ground_truth))
        return s

    def served_index(self) -> int:
        which = self.opts.output if self.opts.format in ("yolo", "yolo-nms") else self.opts.scores_output
        if isinstance(which, str) and which in self.output_names:
            return self.output_names.index(which)
        return int(which or 0) if not isinstance(which, str) or which.isdigit() else 0


def _above(d: Detections, thr: float) -> Detections:
    keep = d[1] >= thr
    return d[0][keep], d[1][keep], d[2][keep]


def _served_cosine(ref: list[np.ndarray], cand: list[np.ndarray], i: int) -> float:
    from .metrics import cosine

    return float(cosine(ref[i], cand[i]).mean())
