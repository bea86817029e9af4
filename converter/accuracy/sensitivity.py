"""Per-layer sensitivity: which layers move the outputs most when quantized.

Runtime-neutral: a runtime binds its quantizer as `LayerBinding` (its layers, a `build(float_layers)`
and an optional cheap pre-ranking); the measured ranking keeps each candidate layer alone in float
and scores the result against the float model (converter.accuracy.evaluator).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from ..data import Dataset

log = logging.getLogger(__name__)
M = TypeVar("M")
PRERANK_SAMPLES = 8  # samples for a runtime's cheap pre-ranking (activation error, debugger statistics)
SENSITIVITY_MODES = ("auto", "always", "off")


@dataclass
class LayerBinding:
    """What a runtime hands the search: its quantizable layers, a builder, and a cheap pre-ranking."""

    layers: list[str]
    build: Callable[[list[str]], Any]  # float_layers -> model file with those layers kept in float
    prerank: list[dict[str, Any]] = field(default_factory=list)  # rows with "layer", largest first; [] = measure all
    prerank_signal: str = ""  # what the pre-ranking measures (report text)
    tool: str | None = None  # what builds the models, when worth naming in the report


def wants_sensitivity(mode: str, reasons: list[str], entry: dict[str, Any]) -> bool:
    """--sensitivity auto|always|off: whether to rank layers (auto: only when int8 misses the budget)."""
    if mode == "off" or (mode == "auto" and not reasons):
        entry["sensitivity"] = "skipped (int8 meets the budget)" if mode == "auto" else "off"
        return False
    return True


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


def measure_sensitivity(binding: LayerBinding, evaluate: Callable[[Any], dict[str, Any]], baseline: dict[str, Any],
                        data: Dataset, candidates: int) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Rank the top `candidates` pre-ranked layers (every layer without a pre-ranking) by exclusion.

    Returns (ranking, report entry, measurement): the entry shows the top ten, the measurement all rows.
    """
    prerank = binding.prerank
    measured = [r["layer"] for r in prerank[:candidates]] if prerank else binding.layers
    log.info("%d quantizable layers; measuring %d by exclusion", len(binding.layers), len(measured))
    ranking = rank_by_exclusion(measured, binding.build, evaluate, baseline)
    ops = {r["layer"]: r["op"] for r in prerank if "op" in r}
    if ops:
        for r in ranking:
            r["op"] = ops.get(r["layer"])
    entry: dict[str, Any] = {"signal": "output error with the layer alone kept in float",
                             **({"tool": binding.tool} if binding.tool else {}),
                             "samples": len(data), "layers": len(binding.layers), "measured": len(measured),
                             "top": ranking[:10]}
    if prerank:
        entry["prerank"] = {"signal": binding.prerank_signal, "samples": min(len(data), PRERANK_SAMPLES),
                            "top": prerank[:10]}
    measurement = {"signal": "leave-one-float", "samples": len(data), "ranking": ranking, "prerank": prerank}
    return ranking, entry, measurement
