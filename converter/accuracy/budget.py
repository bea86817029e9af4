"""`--accuracy-budget`: what "accurate enough" means for a quantized model.

Forms (comma-separate several):  agreement:0.95   top1-drop:1.0   cosine:0.99   map-drop:3
agreement  task agreement with float (top-1 for classifiers, matched boxes for detectors, IoU>=0.9 share
           for maps, per-timestep argmax for sequences), 0-1
map-drop   detectors with --eval-labels: max drop of mAP@0.5 vs the labels, in points
top1-drop  max drop of top-1 accuracy in percentage points (needs eval labels)
cosine     min mean cosine similarity of the outputs (generic outputs)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import scale_reason

KEYS = {"agreement": "min_agreement", "top1-drop": "max_top1_drop", "cosine": "min_cosine", "map-drop": "max_map_drop"}
DEFAULT_MAX_MAP_DROP = 3.0


@dataclass
class Budget:
    min_agreement: float
    max_top1_drop: float
    min_cosine: float
    max_map_drop: float = DEFAULT_MAX_MAP_DROP

    def failures(self, s: dict[str, Any], task: str) -> list[str]:
        """Reasons score s (from converter.accuracy.metrics.score) breaks the budget; empty when it holds."""
        reasons = non_finite_reasons(s)
        if s["agreement"] < self.min_agreement and (task != "generic"):
            reasons.append(f"{s['metric']} {s['agreement']:.2%} < {self.min_agreement:.2%}")
        if "top1_drop_points" in s and s["top1_drop_points"] > self.max_top1_drop:
            reasons.append(f"top-1 drop {s['top1_drop_points']:.2f} points > {self.max_top1_drop:.2f}")
        if "map50_drop_points" in s and s["map50_drop_points"] > self.max_map_drop:
            reasons.append(f"mAP@0.5 vs labels dropped {s['map50_drop_points']:.2f} points > {self.max_map_drop:.2f}")
        if task == "generic" and s["mean_cosine"] < self.min_cosine:
            reasons.append(f"mean cosine {s['mean_cosine']:.4f} < {self.min_cosine}")
        if task == "generic" and (why := scale_reason(s.get("norm_ratio"))):
            reasons.append(why)
        return reasons


def non_finite_reasons(s: dict[str, Any]) -> list[str]:
    """NaN/inf answers fail any budget: the figures beside them say nothing about those samples."""
    reasons, n = [], s.get("samples")
    of = f" of {n}" if n else ""
    if s.get("non_finite_samples"):
        reasons.append(f"the converted model answers NaN or inf on {s['non_finite_samples']}{of} samples where float "
                       "does not (an fp16 overflow? keep the layers that overflow float, or use int8)")
    if s.get("float_non_finite_samples"):
        reasons.append(f"the float model itself answers NaN or inf on {s['float_non_finite_samples']}{of} samples: "
                       "they cannot be compared (check the data's range and preprocessing)")
    return reasons


RANGES = {"agreement": (0.0, 1.0), "cosine": (0.0, 1.0), "top1-drop": (0.0, 100.0), "map-drop": (0.0, 100.0)}


def out_of_range(key: str, number: float) -> str | None:
    """Why `number` cannot be budget `key` (None when it can): shares are 0-1, drops 0-100 points. --min-agreement 5
    (meant as 5 %) used to run the whole conversion and fail its gate against 'budget >= 500.00%'."""
    low, high = RANGES[key]
    if low <= number <= high:
        return None
    return f"{key} must be between 0 and 1 (0.95 = 95 %)" if high == 1.0 else f"{key} must be 0 to 100 points"


def parse_budget(text: str) -> dict[str, float]:
    """'agreement:0.95,top1-drop:1' -> {'min_agreement': 0.95, 'max_top1_drop': 1.0}; ValueError if malformed."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition(":")
        if key not in KEYS or not value:
            raise ValueError(f"accuracy budget {part!r} must be one of {', '.join(k + ':NUMBER' for k in KEYS)}")
        try:
            number = float(value.rstrip("%")) / (100.0 if value.endswith("%") else 1.0)
        except ValueError:
            raise ValueError(f"accuracy budget {part!r}: {value!r} is not a number") from None
        problem = out_of_range(key, number)
        if problem:
            raise ValueError(f"accuracy budget {part!r}: {problem}")
        out[KEYS[key]] = number
    if not out:
        raise ValueError("empty accuracy budget")
    return out
