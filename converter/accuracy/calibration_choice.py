"""Calibration-method selection: try each candidate, keep the one that scores best on eval data.

Runtime-independent: the caller passes `quantize(method) -> model` and `evaluate(model) -> score`
(converter.accuracy.metrics.score), so the TFLite path can reuse it with its own calibrators.
Method specs: minmax | entropy | distribution | percentile (99.99) | percentile:99.999 | meanquantile[:99.99]
(per input, the 0.01 % / 99.99 % quantiles of each tensor, averaged over the inputs: NNCF's kind of range, and
unlike ORT's percentile it holds one input's activations at a time, not all of them) | linearquantile[:99.9]
(meanquantile on the activations no ReLU/Clip bounds: linear bottlenecks, residual Adds; minmax on the rest)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from .metrics import better
from .paired import keeps

log = logging.getLogger(__name__)
M = TypeVar("M")

METHODS = ("minmax", "entropy", "percentile", "distribution", "meanquantile", "linearquantile")
DEFAULT_LINEAR_QUANTILE = 99.9  # measured best on MobileNetV2's held-out photos (99.99: 0.811, 99.9: 0.830)
DEFAULT_PERCENTILE = 99.99
# `--calibration-method auto` tries these; entropy/distribution cost 3-6x minmax's calibration time.
AUTO_CANDIDATES = ("minmax", "meanquantile:99.99", "linearquantile:99.9", "percentile:99.9", "percentile:99.99", "percentile:99.999", "entropy",
                   "distribution")
# Samples below which int8 ranges are unreliable (warned about, not refused).
MIN_SAMPLES = {"minmax": 16, "percentile": 64, "entropy": 32, "distribution": 32, "meanquantile": 16, "linearquantile": 16}


def parse_method(spec: str) -> tuple[str, float | None]:
    """'percentile:99.9' -> ('percentile', 99.9); 'minmax' -> ('minmax', None). ValueError if unknown."""
    name, _, arg = spec.strip().lower().partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown calibration method {spec!r} (use auto or one of {', '.join(METHODS)}[:PERCENTILE])")
    if name not in ("percentile", "meanquantile", "linearquantile"):
        if arg:
            raise ValueError(f"calibration method {name} takes no argument ({spec!r})")
        return name, None
    try:
        pct = float(arg) if arg else DEFAULT_LINEAR_QUANTILE if name == "linearquantile" else DEFAULT_PERCENTILE
    except ValueError:
        raise ValueError(f"percentile in {spec!r} must be a number like 99.99") from None
    if not 50.0 < pct < 100.0:
        raise ValueError(f"percentile in {spec!r} must be between 50 and 100 (exclusive)")
    return name, pct


def candidates(spec: str) -> list[str]:
    """The methods to try for a --calibration-method value (auto, one method, or a comma list)."""
    if spec.strip().lower() == "auto":
        return list(AUTO_CANDIDATES)
    methods = [m.strip().lower() for m in spec.split(",") if m.strip()]
    for m in methods:
        parse_method(m)
    return methods


def sample_warning(methods: list[str], n: int) -> str | None:
    """A warning when n calibration samples are fewer than the methods need."""
    need = max(MIN_SAMPLES[parse_method(m)[0]] for m in methods)
    if n < need:
        return (f"only {n} calibration samples; {', '.join(methods)} calibration needs at least {need} "
                "representative inputs for reliable int8 ranges")
    return None


@dataclass
class Selection(Generic[M]):
    method: str
    model: M
    score: dict[str, Any]
    table: list[dict[str, Any]]


def select_method(methods: list[str], quantize: Callable[[str], M], evaluate: Callable[[M], dict[str, Any]]) -> Selection[M]:
    """Quantize with each method, score it, keep the best (higher agreement, then lower error).

    Each row after the first also carries a paired test against the first method (`vs_<method>`: wins, losses,
    p-value on the same eval inputs; converter/accuracy/paired.py), so the report says whether a method's lead is
    more than a few coin flips. It informs, it does not decide: the methods cost the same at run time, so none is
    the simpler recipe to fall back to (compensation, equalization and float layers, which do cost, are kept only
    when they win the test). A method that fails (e.g. out of memory for histograms) is recorded and skipped.
    """
    best: Selection[M] | None = None
    first: Selection[M] | None = None
    table: list[dict[str, Any]] = []
    for method in methods:
        t0 = time.perf_counter()
        try:
            model = quantize(method)
            s = evaluate(model)
        except Exception as exc:  # one calibrator failing must not sink the conversion
            log.warning("calibration method %s failed: %s", method, str(exc).splitlines()[0][:200])
            table.append({"method": method, "error_message": str(exc).splitlines()[0][:200]})
            continue
        row = {"method": method, **s, "seconds": round(time.perf_counter() - t0, 2)}
        table.append(row)
        log.info("calibration %s: agreement %.4f error %.3g", method, s["agreement"], s["error"])
        if first is None:
            first = best = Selection(method, model, s, table)
            continue
        row["vs_" + first.method] = keeps(first.score, s)[1]
        if better(s, best.score):
            best = Selection(method, model, s, table)
    if best is None or first is None:
        raise RuntimeError("every calibration method failed: " + "; ".join(r.get("error_message", "") for r in table))
    best.table = table
    return best
