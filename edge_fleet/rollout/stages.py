"""Rollout arithmetic: parsing the operator's numbers and splitting devices into stages.

Pure functions only (no registry, no clock), so each is tested directly, with properties
checked by Hypothesis in tests/test_rollout_math.py.
"""

from __future__ import annotations

import math
import re
from typing import Sequence, TypeVar

from ..errors import FleetUsageError

T = TypeVar("T")

DEFAULT_STAGES = (5.0, 25.0, 100.0)
DEFAULT_STAGE_TIMEOUT = 900.0


def parse_target(text: str) -> tuple[str, int]:
    """'digits:2' -> ('digits', 2)."""
    name, sep, version = text.rpartition(":")
    # ASCII digits only ('²'.isdigit() is true, int('²') fails) and within the registry's 64-bit integers
    if not sep or not name or not re.fullmatch(r"[0-9]{1,18}", version) or int(version) < 1:
        raise FleetUsageError(f"bundle must be given as NAME:VERSION (e.g. digits:2), got {text!r}")
    return name, int(version)


def parse_stages(text: str) -> list[float]:
    """'5,25,100' -> [5.0, 25.0, 100.0]: increasing percentages ending at 100."""
    try:
        stages = [float(s.strip().rstrip("%")) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise FleetUsageError(f"--stages must be comma-separated percentages like 5,25,100, got {text!r}") from exc
    if not stages or any(not 0 < s <= 100 for s in stages) or stages != sorted(stages) or stages[-1] != 100:
        raise FleetUsageError(f"--stages must increase and end at 100 (e.g. 5,25,100), got {text!r}")
    return stages


def parse_max_failures(text: str) -> float:
    """'2' -> 2 devices; '0.1' or '10%' -> a fraction of the rollout's devices (stored as < 1)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise FleetUsageError(f"--max-failures must be a count (2) or a fraction (0.1 or 10%), got {text!r}") from exc
    if not value >= 0 or (value >= 1 and not value.is_integer()):  # not >= : NaN too
        raise FleetUsageError(f"--max-failures must be a whole count or a fraction below 1, got {text!r}")
    return value


def failure_threshold(max_failures: float, n_devices: int) -> int:
    """Failures allowed before the rollout halts (it halts when failures exceed this)."""
    return int(max_failures) if max_failures >= 1 or max_failures == 0 else math.floor(max_failures * n_devices)


def split_stages(n: int, stages: Sequence[float]) -> list[int]:
    """Cumulative device counts per stage, at least one new device each; empty stages dropped."""
    out: list[int] = []
    for pct in stages:
        count = max(math.ceil(n * pct / 100.0), (out[-1] if out else 0) + 1)
        count = min(count, n)
        if not out or count > out[-1]:
            out.append(count)
    return out


def assign_stages(items: Sequence[T], counts: Sequence[int]) -> list[tuple[T, int]]:
    """Each item with its stage index: items[:counts[0]] in stage 0, up to counts[1] in stage 1, ..."""
    out: list[tuple[T, int]] = []
    start = 0
    for stage, end in enumerate(counts):
        out += [(item, stage) for item in items[start:end]]
        start = end
    return out
