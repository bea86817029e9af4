"""Reference statistics: what a model's inputs and outputs looked like when it was converted.

The converter computes them on the calibration/eval data and the float model's outputs (pass
`reference-stats`) and packs them as the signed bundle member `reference_stats.json`; the agent
computes the SAME features on live frames (monitor.drift) and compares. Both sides call the
functions here, so a feature cannot mean one thing on the host and another on the device.

Each drift feature is a histogram with fixed bins chosen from the reference data:

    input.brightness   per-frame mean of the model input          (darkened/over-exposed scenes)
    input.contrast     per-frame standard deviation of the input  (blur, fog, a covered lens)
    input.intensity    the input values themselves
    output.class       top-1 class (categorical; at most 10 bins) (classifiers only)
    output.confidence  top-1 probability, ten bins over [0, 1]    (classifiers only)
    output.boxes       boxes per frame, bins 0,1,2,3-4,5-8,9-16,17+ (detectors only)
    output.box_score   the score of each box, quintile bins       (detectors; unfamiliar or degraded scenes)
    output.box_class   the class of each box (categorical, as output.class) (detectors; the class mix)

Detector features count the boxes the device serves (at the manifest's score threshold). A window
holds fewer boxes than frames, so box scores get five bins (PSI's sampling noise grows with the
bins: about (bins - 1) / boxes), and per-box features are only scored over windows holding at least
MIN_BOXES boxes (drift.py).

The input features use a fixed-stride subsample of at most 1024 values per frame (the same on both sides), plus
summaries for people: per-channel mean/std and the mean brightness. Bins come from the
reference's deciles (unique edges; the outer bins are open), so each holds about a tenth of the
reference and PSI has no empty reference bins to divide by.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..pipeline.postprocess import are_probabilities

SCHEMA = 1
MAX_VALUES_PER_FRAME = 1024  # features look at a fixed-stride subsample of each frame: cost independent of image size
MAX_CLASS_BINS = 10  # output.class: the most frequent classes get a bin each, the rest share one
CONFIDENCE_EDGES = [round(0.1 * i, 1) for i in range(1, 10)]
INPUT_FEATURES = ("brightness", "contrast", "intensity")
CLASSIFIER_FEATURES = ("output.class", "output.confidence")
DETECTOR_FEATURES = ("output.boxes", "output.box_score", "output.box_class")
BOX_COUNT_EDGES = [1, 2, 3, 5, 9, 17]  # boxes per frame: 0, 1, 2, 3-4, 5-8, 9-16, 17+
MIN_REFERENCE_BOXES = 20  # fewer reference boxes: score bins fixed (tenths) instead of the reference's quintiles


def channel_axis(layout: str | None) -> int | None:
    """Where the channels are in a batch tensor of this layout (None: treat as one channel)."""
    return {"NCHW": 1, "NHWC": 3, "NC": None}.get(layout or "", None)


def source_order(layout: str | None, source_layout: str | None) -> tuple[int, ...] | None:
    """The axes of a batch in the bundle's `layout` in its source model's order (NHWC from NCHW: 0, 3, 1, 2), or
    None when the bundle kept the source's layout. The converter records the reference on data in the source
    layout, so the device subsamples its feeds in that order: NHWC's every k-th value (k a multiple of 3 at
    any size whose H x W is a multiple of 1024) is one channel only, flagged as drift on unchanged scenes."""
    if not layout or not source_layout or layout == source_layout or sorted(layout) != sorted(source_layout):
        return None
    return tuple(layout.index(axis) for axis in source_layout)


def subsample(x: np.ndarray, order: tuple[int, ...] | None = None) -> np.ndarray:
    """(frames, values) of a batch: every k-th value of each frame, at most MAX_VALUES_PER_FRAME of them, in the
    frame's own order or, with `order` (source_order), in the source layout's (the same values as on the host)."""
    if order is None or x.ndim != len(order):
        frames = x.reshape(x.shape[0], -1)
        return frames[:, :: max(1, frames.shape[1] // MAX_VALUES_PER_FRAME)]
    view = x.transpose(order)  # no copy: only the sampled values are gathered
    size = int(np.prod(view.shape[1:]))
    picked = np.unravel_index(np.arange(0, size, max(1, size // MAX_VALUES_PER_FRAME)), view.shape[1:])
    return view[(slice(None), *picked)]


def input_values(x: np.ndarray, order: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Per-frame feature values of a batch of model inputs (first axis = frame), on the fixed subsample
    (`order`: the batch's axes in the source layout's order, source_order)."""
    sub = subsample(np.asarray(x, dtype=np.float32), order)
    return {"brightness": sub.mean(axis=1, dtype=np.float64), "contrast": sub.std(axis=1, dtype=np.float64),
            "intensity": sub.reshape(-1)}


def channel_means(x: np.ndarray, axis: int | None) -> np.ndarray:
    """Mean of each channel over a batch, on every k-th row and column (at most ~1024 positions per frame)."""
    x = np.asarray(x, dtype=np.float32)
    if axis is None or x.ndim <= axis:
        return np.atleast_1d(subsample(x).mean(dtype=np.float64))
    spatial = [i for i in range(1, x.ndim) if i != axis]
    positions = int(np.prod([x.shape[i] for i in spatial])) if spatial else 1
    step = max(1, int(np.sqrt(positions / 1024.0))) if len(spatial) >= 2 else max(1, positions // 1024)
    view = x[tuple(slice(None, None, step) if i in spatial else slice(None) for i in range(x.ndim))]
    return view.mean(axis=tuple(i for i in range(x.ndim) if i != axis), dtype=np.float64)


def classification_values(logits: np.ndarray, softmax: bool) -> dict[str, np.ndarray]:
    """Top-1 class and its probability per row of a classifier's first output."""
    rows = np.asarray(logits, dtype=np.float64).reshape(np.asarray(logits).shape[0], -1)
    probs = rows
    if softmax and not are_probabilities(rows):
        z = np.exp(rows - rows.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
    top = probs.argmax(axis=1)
    return {"class": top.astype(np.float64), "confidence": probs[np.arange(len(probs)), top]}


def detection_values(frames: Iterable[tuple[Iterable[float], Iterable[int]]]) -> dict[str, np.ndarray]:
    """Detector output values of frames given as (box scores, box classes): boxes per frame, and per box."""
    counts, scores, classes = [], [], []
    for s, c in frames:
        s, c = list(s), list(c)
        counts.append(len(s))
        scores.extend(s)
        classes.extend(c)
    return {"boxes": np.asarray(counts, np.float64), "box_score": np.asarray(scores, np.float64),
            "box_class": np.asarray(classes, np.float64)}


def result_detection_values(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The same values of one frame from a pipeline Postprocessor result ({detections: [{score, label}]})."""
    dets = result.get("detections") or []
    return detection_values([([d["score"] for d in dets], [d["label"] for d in dets])])


@dataclass
class Histogram:
    """Fixed bins and the reference's share per bin.

    Numeric: `edges` are the inner edges (outer bins open). Categorical: `keys` are the class indices
    with a bin of their own; a model with more than MAX_CLASS_BINS classes keeps its most frequent
    MAX_CLASS_BINS - 1 classes and one last bin for all `other` classes (and for any index not in
    `keys`), so a 1000-class model still has 10 bins: PSI over many sparse bins would flag drift on any
    window of a few hundred frames.
    """

    p: list[float]
    edges: list[float] | None = None
    keys: list[int] | None = None

    @property
    def bins(self) -> int:
        return len(self.p)

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        if self.keys is not None:
            keys = np.asarray(self.keys, dtype=np.int64)
            v = np.asarray(values).astype(np.int64)
            pos = np.searchsorted(keys, v)
            found = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == v)
            return np.where(found, pos, self.bins - 1)  # unknown classes: the `other` (or last) bin
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="right")

    def counts(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.bin_of(np.asarray(values)), minlength=self.bins)[: self.bins].astype(np.int64)

    @classmethod
    def from_values(cls, values: np.ndarray, edges: Iterable[float] | None = None, categories: int = 0,
                    quantiles: int = 10) -> "Histogram":
        """Reference histogram of `values`: numeric with edges from their `quantiles` (deciles) unless given,
        or categorical over `categories` class indices."""
        values = np.asarray(values, dtype=np.float64)
        if categories:
            freq = np.bincount(np.clip(values.astype(np.int64), 0, categories - 1), minlength=categories)
            if categories <= MAX_CLASS_BINS:
                h = cls([0.0] * categories, keys=list(range(categories)))
            else:
                top = sorted(int(i) for i in np.argsort(-freq, kind="stable")[: MAX_CLASS_BINS - 1])
                h = cls([0.0] * MAX_CLASS_BINS, keys=top)
        else:
            if edges is None:
                q = np.quantile(values, np.arange(1, quantiles) / quantiles) if values.size else np.zeros(0)
                edges = np.unique(np.round(q, 6))
            inner = [float(e) for e in edges]
            h = cls([0.0] * (len(inner) + 1), inner)
        counts = h.counts(values)
        total = max(1, int(counts.sum()))
        h.p = [round(float(c) / total, 6) for c in counts]
        return h

    def to_dict(self) -> dict[str, Any]:
        return {"p": self.p, **({"keys": self.keys} if self.keys is not None else {"edges": self.edges})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Histogram":
        p = [float(v) for v in d["p"]]
        if not all(math.isfinite(v) and v >= 0 for v in p):
            # a NaN share made that feature's PSI NaN, which max() then took for the worst: `drift ok` at any shift
            raise ValueError("histogram shares must be finite and >= 0")
        if "keys" in d:
            keys = [int(k) for k in d["keys"]]
            if keys != sorted(set(keys)) or len(p) not in (len(keys), len(keys) + 1):
                raise ValueError("class histogram keys must be sorted and unique, one bin each (+ other)")
            return cls(p, keys=keys)
        edges = [float(e) for e in d["edges"]]
        if len(p) != len(edges) + 1:
            raise ValueError("histogram has the wrong number of bins")
        if not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError("histogram edges must be finite and increasing")  # searchsorted binned garbage
        return cls(p, edges)


@dataclass
class ReferenceStats:
    """The bundle's reference: drift features (histograms) and human-readable summaries."""

    features: dict[str, Histogram]
    summary: dict[str, Any]

    def to_json(self) -> bytes:
        obj = {"schema": SCHEMA, "features": {k: h.to_dict() for k, h in sorted(self.features.items())},
               "summary": self.summary}
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ReferenceStats":
        """Parse the bundle member (ValueError with one line if it is not one this agent reads)."""
        try:
            obj = json.loads(data)
            if obj.get("schema") != SCHEMA:
                raise ValueError(f"reference statistics schema {obj.get('schema')!r} is not {SCHEMA}")
            return cls({k: Histogram.from_dict(v) for k, v in obj["features"].items()}, dict(obj.get("summary", {})))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"reference statistics are malformed: {exc}") from None


def reference_stats(inputs: np.ndarray, layout: str | None, outputs: np.ndarray | None = None,
                    softmax: bool = True, classes: int | None = None,
                    detections: list[tuple[np.ndarray, np.ndarray]] | None = None) -> ReferenceStats:
    """Reference statistics of a batch of model inputs (first axis = sample) in `layout`, and of the float
    model's answers on the eval data: a classifier's first output, or a detector's boxes per sample
    as (scores, classes) at the manifest's score threshold."""
    x = np.asarray(inputs, dtype=np.float32)
    values = input_values(x)
    features = {f"input.{k}": Histogram.from_values(values[k]) for k in INPUT_FEATURES}
    axis = channel_axis(layout)
    reduce = tuple(i for i in range(x.ndim) if i != axis) if axis is not None and x.ndim > axis else None
    summary: dict[str, Any] = {
        "input_samples": int(x.shape[0]),
        "channel_mean": np.round(np.atleast_1d(x.mean(axis=reduce)), 6).tolist(),
        "channel_std": np.round(np.atleast_1d(x.std(axis=reduce)), 6).tolist(),
        "brightness": round(float(values["brightness"].mean()), 6) if x.size else None,
        "input_shape": [int(d) for d in x.shape[1:]],
    }
    if outputs is not None:
        out = classification_values(outputs, softmax)
        n_classes = classes or int(np.asarray(outputs).reshape(len(out["class"]), -1).shape[1])
        features["output.class"] = Histogram.from_values(out["class"], categories=n_classes)
        features["output.confidence"] = Histogram.from_values(out["confidence"], edges=CONFIDENCE_EDGES)
        summary.update(output_samples=int(len(out["class"])),
                       mean_confidence=round(float(out["confidence"].mean()), 6))
    if detections is not None:
        features.update(_detector_features(detection_values(detections), classes))
        summary.update(output_samples=len(detections),
                       mean_boxes=round(float(np.mean([len(s) for s, _ in detections])), 6) if detections else None)
    return ReferenceStats(features, summary)


def _detector_features(values: dict[str, np.ndarray], classes: int | None) -> dict[str, Histogram]:
    features = {"output.boxes": Histogram.from_values(values["boxes"], edges=BOX_COUNT_EDGES)}
    scores, labels = values["box_score"], values["box_class"]
    if scores.size:  # a reference without a single box says nothing about scores or classes
        few = scores.size < MIN_REFERENCE_BOXES
        features["output.box_score"] = Histogram.from_values(scores, edges=CONFIDENCE_EDGES if few else None, quantiles=5)
        n = classes or int(labels.max()) + 1
        features["output.box_class"] = Histogram.from_values(labels, categories=max(n, 1))
    return features
