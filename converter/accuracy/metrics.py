"""Task-aware agreement between a float model's outputs and a quantized model's outputs.

Framework-agnostic (numpy only) so the ONNX and TFLite paths share it. Tasks:
classification  [N, C] scores           agreement = share of samples with the same top-1 class
map             [N, 1, H, W] in [0, 1]   agreement = share of samples whose thresholded maps have IoU >= 0.9
                (or [N, H, W, 1])
sequence        [N, T, C] scores        agreement = per-timestep argmax agreement (and exact sequence share)
generic         anything else           agreement = share of samples with cosine >= 0.99 and a magnitude within
                                        10 % of float's (cosine alone is blind to scale: 2x float's answers score 1.0)
`error` is a continuous noise-to-signal ratio used to rank layers and break ties.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .paired import Score

MAP_THRESHOLD = 0.3  # PP-OCR / DB text detectors binarise their probability map at 0.3
MAP_IOU = 0.9
GENERIC_COSINE = 0.99
GENERIC_SCALE = 0.10  # max relative change of an output's L2 norm (a bad dequant scale keeps the cosine at 1)
CLEAR_MARGIN = 0.2  # top-1 minus top-2 probability at which the float model's answer counts as clear


def detect_task(output_shape: list[int | str], classification_head: bool) -> str:
    """Guess the task from an output's shape (and whether the postprocess is classification).

    A map has one channel and a height and a width, [N, 1, H, W] or [N, H, W, 1] (a TFLite or Keras mask); a
    [N, 1, 1, K] conv head (MediaPipe's face landmarks) is a vector, not a 1-pixel-high map: thresholding its
    coordinates scored any answer as the same. Without a classification head (`--task none`) an [N, K] output is a
    regression: its argmax would rank coordinates, so it is judged by cosine and magnitude."""
    rank = len(output_shape)
    if rank == 2 and classification_head:
        return "classification"
    if rank == 4 and _one_channel_plane(list(output_shape[1:])):
        return "map"
    if rank == 3:
        return "sequence"
    return "generic"


def _one_channel_plane(dims: list[int | str]) -> bool:
    """[1, H, W] or [H, W, 1] with H, W > 1 (a symbolic dim counts as > 1)."""
    wide = [not isinstance(d, int) or d > 1 for d in dims]
    return (dims[0] == 1 and wide[1] and wide[2]) or (dims[2] == 1 and wide[0] and wide[1])


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def finite_rows(a: np.ndarray) -> np.ndarray:
    """Per sample, whether every value of it is a number (an fp16 overflow gives inf, then NaN)."""
    return np.isfinite(_flat(a)).all(1)


def non_finite_counts(ref: np.ndarray, cand: np.ndarray) -> dict[str, int]:
    """Samples the candidate answers NaN/inf where float does not, and samples float itself answers so."""
    r_ok, c_ok = finite_rows(ref), finite_rows(cand)
    counts = {"non_finite_samples": int((r_ok & ~c_ok).sum()), "float_non_finite_samples": int((~r_ok).sum())}
    return {k: v for k, v in counts.items() if v}


def _finite_pair(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both sides flattened per sample with the samples where either is not a number zeroed, and that mask."""
    r, c = _flat(ref), _flat(cand)
    ok = np.isfinite(r).all(1) & np.isfinite(c).all(1)
    return np.where(ok[:, None], r, 0.0), np.where(ok[:, None], c, 0.0), ok


def cosine(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per sample; 0 where either side is not a number (NaN norms used to fall through to 1.0: a model
    answering NaN everywhere scored a perfect cosine and passed the gate)."""
    r, c, ok = _finite_pair(ref, cand)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    return np.where(ok, np.where(norms > 0, (r * c).sum(1) / np.maximum(norms, 1e-30), 1.0), 0.0)


def norms(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample L2 norms of float's and the candidate's outputs (NaN where either is not a number)."""
    r, c, ok = _finite_pair(ref, cand)
    return np.where(ok, np.linalg.norm(r, axis=1), np.nan), np.where(ok, np.linalg.norm(c, axis=1), np.nan)


def same_scale(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per sample, whether the candidate's magnitude is within GENERIC_SCALE of float's (near-zero answers, under
    a thousandth of float's typical norm, count as the same)."""
    nr, nc = norms(ref, cand)
    finite = nr[np.isfinite(nr)]
    floor = 1e-3 * float(np.median(finite)) if len(finite) else 0.0
    with np.errstate(invalid="ignore"):
        return np.abs(nc - nr) <= GENERIC_SCALE * nr + floor


def norm_ratio(ref: np.ndarray, cand: np.ndarray) -> float | None:
    """Median over samples of |candidate| / |float| (None when float answers only zeros or no numbers). A sample
    whose two norms differ by less than GENERIC_SCALE of float's largest counts as 1: an int8 presence score of 0
    for float's 0.001 (its step is 1/256) is the same 'no hand', not '0.00x float's magnitude'."""
    nr, nc = norms(ref, cand)
    keep = np.isfinite(nr) & (nr > 0)
    if not keep.any():
        return None
    nr, nc = nr[keep], nc[keep]
    close = np.abs(nc - nr) <= GENERIC_SCALE * float(nr.max())
    return round(float(np.median(np.where(close, 1.0, nc / nr))), 6)


def scale_reason(ratio: float | None) -> str | None:
    """Why a generic output's magnitude fails the gate, or None: cosine cannot see a scaled answer."""
    if ratio is None or abs(ratio - 1.0) <= GENERIC_SCALE:
        return None
    return (f"the outputs are {ratio:.2f}x float's magnitude (median; within {GENERIC_SCALE:.0%} asked): a scale or "
            "normalisation differs, which cosine similarity cannot see")


def error(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean squared error over the reference's variance (0 = identical), on the samples float answers with
    numbers; infinite when the candidate answers NaN/inf on any of them (it ranks last)."""
    r, c = _flat(ref), _flat(cand)
    keep = np.isfinite(r).all(1)
    r, c = r[keep], c[keep]
    if not np.isfinite(c).all():
        return math.inf
    if not len(r):
        return 0.0
    return float(((r - c) ** 2).mean() / max(float(r.var()), 1e-12))


def map_iou(ref: np.ndarray, cand: np.ndarray, threshold: float = MAP_THRESHOLD) -> np.ndarray:
    """Per-sample IoU of the binarised maps (both empty counts as 1)."""
    r, c = _flat(ref) > threshold, _flat(cand) > threshold
    inter, union = (r & c).sum(1), (r | c).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows as probabilities: kept when they already are (softmax head), else softmax of the logits."""
    if scores.min() >= 0 and np.allclose(scores.sum(1), 1.0, atol=1e-3):
        return scores
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def agreement(ref: np.ndarray, cand: np.ndarray, task: str) -> dict[str, Any]:
    """{'agreement': share in [0, 1], 'metric': its name, ...details} for one output tensor."""
    if task == "classification":
        r, c = _flat(ref), _flat(cand)
        same = hits(ref, cand, task)
        out: dict[str, Any] = {"agreement": float(same.mean()), "metric": "top1_agreement"}
        if r.shape[1] > 1:
            # Where the float model itself barely prefers its answer, any perturbation flips it; report
            # agreement where its answer is clear separately, so a user can tell the two kinds of loss apart.
            top2 = np.sort(_probabilities(r), axis=1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
            out["clear_share"] = round(float(clear.mean()), 6)
            if clear.any():
                out["clear_agreement"] = round(float(same[clear].mean()), 6)
        return out
    if task == "map":
        iou = np.where(_both_finite(ref, cand), map_iou(ref, cand), 0.0)
        return {"agreement": float((iou >= MAP_IOU).mean()), "metric": f"share_iou>={MAP_IOU}",
                "mean_iou": round(float(iou.mean()), 6)}
    if task == "sequence":
        same = hits(ref, cand, task).reshape(len(ref), -1)
        return {"agreement": float(same.mean()), "metric": "timestep_argmax_agreement",
                "sequence_equal": round(float(same.all(1).mean()), 6)}
    return {"agreement": float(hits(ref, cand, task).mean()),
            "metric": f"share_cosine>={GENERIC_COSINE}_scale_within_{GENERIC_SCALE:g}"}


def _both_finite(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    return finite_rows(ref) & finite_rows(cand)


def hits(ref: np.ndarray, cand: np.ndarray, task: str) -> np.ndarray:
    """Per unit (sample; timestep for sequences), whether the candidate agrees: what `agreement` is the mean of,
    and what converter.accuracy.paired compares between two candidates on the same inputs."""
    ok = _both_finite(ref, cand)  # a sample answered with NaN/inf never agrees (argmax picks the first NaN)
    if task == "classification":
        return (_flat(ref).argmax(1) == _flat(cand).argmax(1)) & ok
    if task == "map":
        return (map_iou(ref, cand) >= MAP_IOU) & ok
    if task == "sequence":
        same = ref.argmax(-1) == cand.argmax(-1)
        return (same.reshape(len(ref), -1) & ok[:, None]).ravel()
    return (cosine(ref, cand) >= GENERIC_COSINE) & same_scale(ref, cand)


def score(ref: np.ndarray, cand: np.ndarray, task: str, labels: np.ndarray | None = None) -> Score:
    """Agreement plus continuous error and (classification with labels) accuracy drop; `.hits` per unit."""
    s = Score(agreement(ref, cand, task))
    s.hits = hits(ref, cand, task)
    s["agreement"] = round(s["agreement"], 6)
    s["error"] = round(error(ref, cand), 8)
    s["mean_cosine"] = round(float(cosine(ref, cand).mean()), 6)
    if task == "generic":
        s["norm_ratio"] = norm_ratio(ref, cand)
    s.update(non_finite_counts(ref, cand))
    if task == "classification" and labels is not None:
        f = float((_flat(ref).argmax(1) == labels).mean())
        q = float((_flat(cand).argmax(1) == labels).mean())
        s["top1_drop_points"] = round(100.0 * (f - q), 4)
    return s


def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether score a beats score b: higher agreement, then lower error."""
    return (a["agreement"], -a["error"]) > (b["agreement"], -b["error"])
