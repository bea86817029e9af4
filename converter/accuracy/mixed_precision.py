"""Runtime-independent layer sensitivity ranking and greedy mixed-precision fallback.

Both take callbacks, so the ONNX path (nodes_to_exclude in ORT's quantize_static) and a TFLite
path (a quantizer deny-list) share the search:
  build(float_layers) -> model          quantize everything except float_layers
  evaluate(model)     -> score dict     converter.accuracy.metrics.score against the float outputs
  failures(score)     -> list[str]      budget violations (empty = passes)
  latency(model)      -> ms             mean latency (optional)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

log = logging.getLogger(__name__)
M = TypeVar("M")


@dataclass
class Step:
    layer: str | None  # the layer kept in float at this step (None = plain int8)
    score: dict[str, Any]
    latency_ms: float | None
    failures: list[str]
    check_score: dict[str, Any] | None = None  # the same score on held-out samples (greedy_fallback's `check`)


@dataclass
class FallbackResult(Generic[M]):
    float_layers: list[str]
    model: M
    passed: bool
    steps: list[Step] = field(default_factory=list)

    def report(self) -> list[dict[str, Any]]:
        """Per step: the layer added, agreement/error after it, and the gain/latency cost vs the step before."""
        rows = []
        for prev, step in zip([None, *self.steps], self.steps):
            row: dict[str, Any] = {"layer": step.layer, "agreement": step.score["agreement"], "error": step.score["error"],
                                   "latency_ms": step.latency_ms, "passes": not step.failures}
            if step.check_score is not None:
                row["held_out_agreement"] = step.check_score["agreement"]
            if prev is not None:
                row["agreement_gained"] = round(step.score["agreement"] - prev.score["agreement"], 6)
                if step.latency_ms is not None and prev.latency_ms is not None:
                    row["latency_paid_ms"] = round(step.latency_ms - prev.latency_ms, 4)
            rows.append(row)
        return rows


def rank_by_exclusion(layers: list[str], build: Callable[[list[str]], M], evaluate: Callable[[M], dict[str, Any]],
                      baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Keep each layer alone in float; rank by how much that lowers the output error (most sensitive first)."""
    rows = []
    for i, layer in enumerate(layers):
        s = evaluate(build([layer]))
        rows.append({"layer": layer, "error_if_float": s["error"], "agreement_if_float": s["agreement"],
                     "error_reduction": round(baseline["error"] - s["error"], 8),
                     "agreement_gain": round(s["agreement"] - baseline["agreement"], 6)})
        log.debug("sensitivity %d/%d %s: %s", i + 1, len(layers), layer, rows[-1])
    rows.sort(key=lambda r: (r["error_reduction"], r["agreement_gain"]), reverse=True)
    return rows


def greedy_fallback(ranking: list[str], build: Callable[[list[str]], M], evaluate: Callable[[M], dict[str, Any]],
                    failures: Callable[[dict[str, Any]], list[str]], max_float_layers: int,
                    latency: Callable[[M], float] | None = None, start: tuple[M, dict[str, Any]] | None = None,
                    check: Callable[[M], dict[str, Any]] | None = None) -> FallbackResult[M]:
    """Add layers from `ranking` to the float set one at a time until `failures` is empty.

    Stops at max_float_layers. Without `check`, the result is the first passing step, else the best one
    (agreement, then error). With `check` (the same score on held-out samples the search never saw),
    every step is also scored there and the result is the step with the best held-out agreement (ties:
    better search agreement, then fewer float layers), so layers that only fit the search samples are
    dropped again.
    """
    if start is None:
        model = build([])
        start = (model, evaluate(model))
    model, s = start
    models = [model]
    steps = [Step(None, s, latency(model) if latency else None, failures(s), check(model) if check else None)]
    kept: list[str] = []
    for layer in ranking:
        if not steps[-1].failures or len(kept) >= max_float_layers:
            break
        kept.append(layer)
        model = build(list(kept))
        s = evaluate(model)
        models.append(model)
        steps.append(Step(layer, s, latency(model) if latency else None, failures(s), check(model) if check else None))
        log.info("kept %d layer(s) in float (+%s): agreement %.4f%s", len(kept), layer, s["agreement"],
                 f", held-out {steps[-1].check_score['agreement']:.4f}" if check else "")
    if check:
        pick = max(range(len(steps)), key=lambda i: (steps[i].check_score["agreement"], steps[i].score["agreement"], -i))
    elif not steps[-1].failures:
        pick = len(steps) - 1
    else:
        pick = max(range(len(steps)), key=lambda i: (steps[i].score["agreement"], -steps[i].score["error"], -i))
    return FallbackResult(kept[:pick], models[pick], not steps[pick].failures, steps)
