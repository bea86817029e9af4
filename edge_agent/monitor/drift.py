"""Drift on the device: the reference features over a sliding window of live frames, scored by PSI.

Why PSI (population stability index) and not a KS distance: the bundle carries binned
histograms (a few kB, signed), not raw samples, and PSI is defined on bins; it also covers the
categorical class distribution, where KS does not apply; and its usual reading is shared by
model-monitoring practice: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a
significant one. PSI = sum over bins of (live - ref) * ln(live / ref), with shares floored at
1e-4 so an empty bin does not make it infinite.

The window: the last `window` frames (default 200). Scores are recomputed every `stride` frames
(default 10) once the window is full; before that the state is `warming_up`. The state turns
`drift` when any feature's PSI exceeds `threshold` (default 0.25) and back to `ok` below 80 % of
it (hysteresis, so a score hovering at the threshold does not flap). A stream that shifts is
therefore flagged at the latest `window + stride` frames after the shift; a strong shift (a
darkened or inverted scene) much sooner, once enough of the window holds shifted frames.

A detector's output features come from the boxes it served (the pipeline's result); the per-box
ones (score, class) are scored once the window holds at least MIN_BOXES boxes, and left out before.

The work per frame is a few numpy reductions on at most 1024 input values and a bincount per
feature (scripts/bench_monitor.py measures it against the frame time).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reference import (CLASSIFIER_FEATURES, DETECTOR_FEATURES, INPUT_FEATURES, Histogram, ReferenceStats, channel_axis,
                        channel_means, classification_values, input_values, result_detection_values, source_order)

PSI_FLOOR = 1e-4
DEFAULT_WINDOW = 200
DEFAULT_STRIDE = 10
DEFAULT_THRESHOLD = 0.25
CLEAR_FRACTION = 0.8
MIN_BOXES = 50  # per-box features are scored over at least this many boxes (PSI on fewer is noise)
PER_BOX = ("output.box_score", "output.box_class")


def psi(reference: np.ndarray | list[float], live: np.ndarray | list[float]) -> float:
    """Population stability index of a live histogram (counts or shares) against a reference one."""
    e = np.maximum(np.asarray(reference, dtype=np.float64), 0)
    a = np.maximum(np.asarray(live, dtype=np.float64), 0)
    e = np.maximum(e / max(e.sum(), 1e-12), PSI_FLOOR)
    a = np.maximum(a / max(a.sum(), 1e-12), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftConfig:
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    threshold: float = DEFAULT_THRESHOLD


@dataclass
class DriftSnapshot:
    """What telemetry, /metrics and the reported state show."""

    state: str  # no_reference | warming_up | ok | drift
    frames: int  # frames in the window
    window: int
    threshold: float
    psi: dict[str, float] = field(default_factory=dict)
    worst: str | None = None
    live: dict[str, Any] = field(default_factory=dict)  # live summaries beside the reference's
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "frames": self.frames, "window": self.window, "threshold": self.threshold,
                "psi": self.psi, "worst": self.worst, "live": self.live, "model": self.model}


class DriftMonitor:
    """Keeps per-frame bin counts of the last `window` frames and scores them against the reference.

    `observe(inputs, outputs, result)` is called once per live input (on the producer's thread, cheap);
    `snapshot()` from any thread. A new model (new reference) restarts the window. `kind` is the
    model's postprocess kind: which output features it can watch (a classifier's from its raw
    outputs, a detector's from the boxes it served: `result`), None for inputs only.
    """

    def __init__(self, reference: ReferenceStats | None, layout: str | None = None, softmax: bool = True,
                 kind: str | None = "classification", config: DriftConfig | None = None,
                 model: str | None = None, output_index: int = 0, source_layout: str | None = None) -> None:
        self.config = config or DriftConfig()
        self.output_index = output_index  # the served output (the converter's reference stats are of that one)
        self.reference, self.layout, self.softmax, self.model = reference, layout, softmax, model
        feats = reference.features if reference else {}
        outputs = {"classification": CLASSIFIER_FEATURES, "detection": DETECTOR_FEATURES}.get(kind or "", ())
        self.kind = kind
        known = (*(f"input.{k}" for k in INPUT_FEATURES), *outputs)  # a newer converter's others: not scored here
        self.features: dict[str, Histogram] = {k: h for k, h in feats.items() if k in known}
        self._axis = channel_axis(layout)
        self._order = source_order(layout, source_layout)  # the reference was recorded in the source layout
        # per observed input: bin counts, channel-mean sum, rows (a served request may carry several frames)
        self._window: deque[tuple[dict[str, np.ndarray], np.ndarray, int]] = deque()
        self._rows = 0
        self._sums = {k: np.zeros(h.bins, np.int64) for k, h in self.features.items()}
        self._since = 0
        self._lock = threading.Lock()
        self._snap = DriftSnapshot("no_reference" if not self.features else "warming_up", 0, self.config.window,
                                   self.config.threshold, model=model)

    def observe(self, inputs: np.ndarray, outputs: list[np.ndarray] | None,
                result: dict[str, Any] | None = None) -> None:
        """One live input: its model input (first axis = frames), the model's outputs, and (detectors) the
        served result of frame 0. Output features missing for an input (a detector's served tensors,
        which nobody decoded) are simply not counted for it."""
        if not self.features:
            return
        values = input_values(inputs, self._order)
        if outputs is not None and self.kind == "classification" and "output.class" in self.features:
            values.update(classification_values(outputs[self.output_index], self.softmax))
        elif result is not None and self.kind == "detection":
            values.update(result_detection_values(result))
        counts = {k: h.counts(values[name]) for k, h in self.features.items()
                  if (name := k.split(".", 1)[1]) in values}
        rows = int(np.shape(inputs)[0]) if np.ndim(inputs) else 1
        channel_sum = channel_means(inputs, self._axis) * rows
        with self._lock:
            self._window.append((counts, channel_sum, rows))
            self._rows += rows
            for k, c in counts.items():
                self._sums[k] += c
            while self._rows - self._window[0][2] >= self.config.window:  # keep the last `window` frames
                old, _, old_rows = self._window.popleft()
                self._rows -= old_rows
                for k, c in old.items():
                    self._sums[k] -= c
            self._since += rows
            if self._rows >= self.config.window and self._since >= self.config.stride:
                self._since = 0
                self._score()
            else:
                self._snap.frames = self._rows

    def _score(self) -> None:
        scores = {k: round(psi(h.p, self._sums[k]), 4) for k, h in self.features.items()
                  if self._sums[k].sum() >= (MIN_BOXES if k in PER_BOX else 1)}
        if not scores:  # only per-box features, and too few boxes yet
            self._snap.frames = self._rows
            return
        worst = max(scores, key=scores.__getitem__)
        prev, threshold = self._snap.state, self.config.threshold
        high = scores[worst] > threshold
        state = "drift" if high or (prev == "drift" and scores[worst] > CLEAR_FRACTION * threshold) else "ok"
        n = self._rows
        # summed over the window's inputs here, not kept as a running sum: one NaN/inf input (an app's request)
        # made a running sum NaN for the rest of the process (NaN - NaN is NaN once the input left the window)
        channel_sum = np.sum([c for _, c, _ in self._window], axis=0)
        live = {"channel_mean": np.round(channel_sum / n, 4).tolist()}
        self._snap = DriftSnapshot(state, n, self.config.window, threshold, scores, worst, live, self.model)

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            s = self._snap
            return DriftSnapshot(s.state, s.frames, s.window, s.threshold, dict(s.psi), s.worst, dict(s.live), s.model)
