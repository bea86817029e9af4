"""TFLite int8 calibration methods: what `--calibration-method` can mean on TFLite, and the measured choice.

TensorFlow's calibrator records min/max only. On top of it this converter can impose `linearquantile[:P]` ranges
(converter/tflite/linear_quantile.py); every other method of the ONNX path (entropy, percentile, distribution,
meanquantile) has no TFLite implementation here, so asking for one is a usage error (exit 2) rather than a silent
minmax. `auto` or a comma list of TFLite methods compares the candidates as the ONNX path does
(converter/accuracy/calibration_choice.select_method: each candidate converted, scored against float on the eval
data, best agreement then lowest error kept); each candidate is one onnx2tf / TFLiteConverter conversion.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..accuracy.calibration_choice import DEFAULT_LINEAR_QUANTILE, candidates, parse_method, select_method
from ..errors import UsageError

log = logging.getLogger(__name__)
R = TypeVar("R")
TFLITE_METHODS = ("minmax", "linearquantile")
AUTO_CANDIDATES = ("minmax", f"linearquantile:{DEFAULT_LINEAR_QUANTILE:g}")


def tflite_methods(spec: str | None, profile_default: str = "minmax") -> list[str]:
    """The calibration methods to try for a --calibration-method value on TFLite: one, or the candidates of `auto` /
    a comma list. Without a value, the profile's method (minmax when TFLite cannot do it). UsageError for a method
    TFLite int8 cannot use."""
    if not spec:
        try:
            return [profile_default] if parse_method(profile_default)[0] in TFLITE_METHODS else ["minmax"]
        except ValueError:
            return ["minmax"]
    if spec.strip().lower() == "auto":
        return list(AUTO_CANDIDATES)
    try:
        methods = candidates(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    bad = [m for m in methods if parse_method(m)[0] not in TFLITE_METHODS]
    if bad or not methods:
        raise UsageError(f"--calibration-method {spec}: TFLite int8 takes minmax, linearquantile[:PCT], a comma list of "
                         f"those or auto (compared on the eval data), not {', '.join(bad) or 'nothing'}; the other "
                         "methods are ONNX only (--format onnx)")
    return list(dict.fromkeys(methods))


def quantile_of(method: str) -> float | None:
    """P of linearquantile:P, None for minmax (TensorFlow's own ranges)."""
    name, pct = parse_method(method)
    return pct if name == "linearquantile" else None


def label(method: str) -> str:
    """How the report names a method (minmax: measured with every tensor kept, not TF's in-place records)."""
    q = quantile_of(method)
    return f"linearquantile:{q:g}" if q is not None else "minmax (measured)"


def choose_method(methods: list[str], build: Callable[[str, Path], R], model_of: Callable[[R], Path],
                  evaluate: Callable[[Path], dict[str, Any]] | None, workdir: Path) -> tuple[R, str, dict[str, Any] | None]:
    """Build with each method (its own folder under `workdir` when there are several) and keep the best on the eval
    data: (result, chosen method, the search's report entry or None for a single method). Without an evaluator
    only the first method is built."""
    if len(methods) > 1 and evaluate is None:
        log.warning("--calibration-method %s needs eval data (--eval) to compare methods on TFLite; using %s",
                    ",".join(methods), methods[0])
        methods = methods[:1]
    if len(methods) == 1:
        return build(methods[0], workdir), methods[0], None
    folders = {m: workdir / f"calibration-{i}-{m.replace(':', '-')}" for i, m in enumerate(methods)}
    sel = select_method(methods, lambda m: build(m, folders[m]), lambda r: evaluate(model_of(r)))
    log.info("TFLite calibration: %s kept (%s)", sel.method,
             ", ".join(f"{r['method']} {r.get('agreement', float('nan')):.4f}" for r in sel.table))
    return sel.model, sel.method, {"chosen": sel.method, "candidates": sel.table,
                                   "rule": "best agreement with float on the eval data, then lowest error"}
