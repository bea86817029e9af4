"""Generic outputs: answers at another scale never pass the gate.

Cosine similarity ignores magnitude: a converted embedding or regression model answering 2x float's
values (a wrong dequantisation scale, a normalisation applied twice) scored cosine 1.0 and passed.
The gate now also compares the outputs' L2 norms (within 10 %)."""

from __future__ import annotations

import numpy as np
import pytest

from converter.accuracy.budget import Budget
from converter.accuracy.metrics import GENERIC_SCALE, score
from converter.passes.accuracy_gate import compare_outputs, gate_failures

RNG = np.random.default_rng(3)
LENIENT = Budget(min_agreement=0.0, max_top1_drop=100.0, min_cosine=0.0)


@pytest.mark.parametrize("factor", [2.0, 0.5, 1.0 + 2 * GENERIC_SCALE])
def test_a_scaled_generic_answer_scores_no_agreement_and_fails_the_budget(factor):
    ref = RNG.normal(size=(30, 16))
    s = score(ref, ref * factor, "generic")
    assert s["mean_cosine"] == pytest.approx(1.0) and s["agreement"] == 0.0
    assert s["norm_ratio"] == pytest.approx(factor)
    reasons = LENIENT.failures(s, "generic")
    assert len(reasons) == 1 and f"{factor:.2f}x float's magnitude" in reasons[0]


def test_quantization_noise_at_float_scale_still_passes():
    ref = RNG.normal(size=(30, 16))
    noisy = ref * 1.03 + RNG.normal(scale=0.02, size=ref.shape)
    s = score(ref, noisy, "generic")
    assert s["agreement"] == 1.0 and LENIENT.failures(s, "generic") == []
    strict = Budget(min_agreement=0.99, max_top1_drop=0.0, min_cosine=0.99)
    assert strict.failures(s, "generic") == []


def test_near_zero_answers_where_float_answers_zero_agree():
    ref = RNG.normal(size=(10, 8))
    ref[0] = 0.0
    cand = ref.copy()
    cand[0] = 1e-7
    assert score(ref, cand, "generic").hits.all()


def test_the_converters_gate_refuses_a_scaled_answer_and_offers_no_budget_that_accepts_it():
    from types import SimpleNamespace

    from converter.passes.accuracy_gate import way_forward

    ref = RNG.normal(size=(12, 5))
    m = compare_outputs(ref, 3 * ref, None, classification=False)
    assert m["mean_cosine"] == pytest.approx(1.0) and m["norm_ratio"] == pytest.approx(3.0)
    reasons = gate_failures(m, 100.0, 0.0, 0.0)
    assert reasons and "3.00x float's magnitude" in reasons[0]
    ctx = SimpleNamespace(options=SimpleNamespace(command=None))
    assert way_forward(ctx, m).startswith("Nothing to accept: no budget takes answers at another scale")
    assert gate_failures(compare_outputs(ref, ref * 1.05, None, classification=False), 100.0, 0.0, 0.99) == []
