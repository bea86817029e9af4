"""Is a recipe choice really better? An exact one-sided sign test on the inputs where two candidates disagree.

Every recipe choice (calibration method, cross-layer equalization, compensation, layers kept in float) is
made by scoring candidates on the same selection inputs. "Higher agreement" alone kept choices that won by
a sample or two: on EfficientNet-Lite0 plain int8 beat every one of them on held-out photos. Both
candidates are scored on the same inputs, so the fair test is paired: only the discordant inputs count
(the candidate keeps float's answer where the simpler recipe loses it: a win; the reverse: a loss). Under
"no difference" each discordant input is a coin flip, so the one-sided p-value is P(Binomial(n, 1/2) >= wins)
(exact McNemar test). A choice is kept when p <= ALPHA; otherwise the simpler recipe stays.

With ALPHA 0.1 the fewest wins that count are 4 of 4, 6 of 7, 7 of 9, 9 of 12, 10 of 14, 12 of 17, 15 of 22.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALPHA = 0.1


class Score(dict):
    """A score dict (converter.accuracy.metrics.score) that also carries the per-unit hits it was counted from
    (`hits`: bool per sample, or per timestep for sequences). Copies ({**s}, JSON) drop them, so reports stay small."""

    hits: np.ndarray | None = None


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact p-value of `wins` or more among wins + losses fair coin flips (1.0 when there are none)."""
    n = wins + losses
    if n == 0 or wins <= 0:
        return 1.0
    if n <= 60:  # exact in integers (2**n still fits a float's range with room to spare)
        return min(1.0, sum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0 ** n)
    # sequences count timesteps (thousands of discordant units): the same sum in log space
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2) for k in range(wins, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def paired_test(simple: np.ndarray, candidate: np.ndarray, alpha: float = ALPHA) -> dict[str, Any]:
    """The candidate's hits against the simpler recipe's on the same units: wins, losses, p-value, verdict."""
    s, c = np.asarray(simple, bool).ravel(), np.asarray(candidate, bool).ravel()
    if s.shape != c.shape:
        raise ValueError(f"paired test needs the same inputs: {s.shape} vs {c.shape}")
    wins, losses = int((c & ~s).sum()), int((s & ~c).sum())
    p = sign_test_p(wins, losses)
    return {"wins": wins, "losses": losses, "units": int(s.size), "p_value": round(p, 4), "alpha": alpha,
            "better": p <= alpha, "test": "exact one-sided sign test on discordant inputs (McNemar)"}


def compare(simple: dict[str, Any], candidate: dict[str, Any], alpha: float = ALPHA) -> dict[str, Any] | None:
    """paired_test on two scores' hits; None when either score carries none (a scorer without per-input hits,
    e.g. the detection gate's box counts): the caller then falls back to comparing the agreement figures."""
    a, b = getattr(simple, "hits", None), getattr(candidate, "hits", None)
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    return paired_test(a, b, alpha)


def keeps(simple: dict[str, Any], candidate: dict[str, Any], alpha: float = ALPHA) -> tuple[bool, dict[str, Any]]:
    """(keep the candidate?, what to report). With hits: the paired test decides. Without: strictly higher agreement
    (the rule before the test existed), reported as such."""
    test = compare(simple, candidate, alpha)
    if test is not None:
        return test["better"], test
    return candidate["agreement"] > simple["agreement"], {"test": "no per-input hits: higher agreement decides",
                                                          "better": candidate["agreement"] > simple["agreement"]}
