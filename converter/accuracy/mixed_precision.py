"""Runtime-independent mixed precision: keep the most sensitive layers in float until the budget holds.

The ONNX path (nodes_to_exclude in ORT's quantize_static) and the TFLite path (a quantizer deny-list)
share the whole search (`search_mixed_precision`); a runtime comes in as callbacks:
  build(float_layers) -> model          quantize everything except float_layers
  evaluate(model)     -> score dict     converter.accuracy.metrics.score against the float outputs
  failures(score)     -> list[str]      budget violations (empty = passes)
  latency(model)      -> ms             mean latency (optional)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from ..data import Dataset
from ..options import INT8_STATIC, PassOption, whole_number
from .budget import Budget
from .evaluator import Evaluator
from .paired import compare
from .sensitivity import SENSITIVITY_MODES, LayerBinding, measure_sensitivity, wants_sensitivity
from .speed_floor import DEFAULT_MIN_SPEEDUP, SpeedFloor, host_arch, measure_floor, resolve_min_speedup

log = logging.getLogger(__name__)
M = TypeVar("M")
# With at least 2x this many eval samples, the fallback searches on one half and picks how many float
# layers to keep on the other: the greedy search otherwise fits its own samples (PP-OCR cls: +3 points on
# the search set, -1.5 on held-out images).
HOLDOUT_MIN = 25


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


def greedy_fallback(ranking: list[str], build: Callable[[list[str]], M], evaluate: Callable[[M], dict[str, Any]],
                    failures: Callable[[dict[str, Any]], list[str]], max_float_layers: int,
                    latency: Callable[[M], float] | None = None, start: tuple[M, dict[str, Any]] | None = None,
                    check: Callable[[M], dict[str, Any]] | None = None,
                    max_latency_ms: float | None = None) -> FallbackResult[M]:
    """Add layers from `ranking` to the float set one at a time until `failures` is empty.

    Stops at max_float_layers. Without `check`, the result is the first passing step, else the best one
    (agreement, then error). With `check` (the same score on held-out samples the search never saw),
    every step is also scored there and the result is the step with the best held-out agreement (ties:
    better search agreement, then fewer float layers), so layers that only fit the search samples are
    dropped again. With max_latency_ms (the speed floor: fp32 latency / --min-speedup), the walk also stops
    at the first step slower than that, and that step is never the result.
    """
    if start is None:
        model = build([])
        start = (model, evaluate(model))
    model, s = start
    models = [model]
    steps = [Step(None, s, latency(model) if latency else None, failures(s), check(model) if check else None)]
    kept: list[str] = []
    slow = lambda st: max_latency_ms is not None and st.latency_ms is not None and st.latency_ms > max_latency_ms  # noqa: E731
    for layer in ranking:
        # the caller timed plain int8 above the floor (fastest of two, converter/accuracy/speed_floor.py): a slow
        # timing of it here is load noise, only a float layer's cost ends the walk
        if not steps[-1].failures or len(kept) >= max_float_layers or (kept and slow(steps[-1])):
            break
        kept.append(layer)
        model = build(list(kept))
        s = evaluate(model)
        models.append(model)
        ms = latency(model) if latency else None
        if ms is not None and max_latency_ms is not None and ms > max_latency_ms:
            ms = min(ms, latency(model))  # timed again before a load spike may end the search
        steps.append(Step(layer, s, ms, failures(s), check(model) if check else None))
        log.info("kept %d layer(s) in float (+%s): agreement %.4f%s", len(kept), layer, s["agreement"],
                 f", held-out {steps[-1].check_score['agreement']:.4f}" if check else "")
    eligible = [i for i in range(len(steps)) if i == 0 or not slow(steps[i])]
    if check:
        pick = max(eligible, key=lambda i: (steps[i].check_score["agreement"], steps[i].score["agreement"], -i))
    elif not steps[eligible[-1]].failures:
        pick = eligible[-1]
    else:
        pick = max(eligible, key=lambda i: (steps[i].score["agreement"], -steps[i].score["error"], -i))
    return FallbackResult(kept[:pick], models[pick], not steps[pick].failures, steps)


def float_layer_limit(option: int | None, n_layers: int, speed_floor: bool = False) -> int:
    """How many layers the fallback may keep in float.

    With a measured speed floor (--min-speedup) the search stops where int8 stops paying for itself, not
    at a layer count: by default it may then keep up to half the layers in float. Without one (no timing:
    --bench-runs 0, --reproducible), a quarter of the quantizable layers (at most 8): a model with most of
    its layers in float is no longer an int8 model, and broken calibration data must still fail the gate.
    An explicit --max-float-layers is the user's call, but never every layer.
    """
    if option is not None:
        limit = option
    else:
        limit = max(1, n_layers // 2) if speed_floor else min(8, max(1, n_layers // 4))
    return min(limit, n_layers - 1)


def fallback_report(result: FallbackResult, evaluate: Evaluator, budget: Budget, limit: int, n_layers: int,
                    max_option: int | None, halves: tuple[int, int] | None) -> tuple[dict[str, Any], dict[str, Any], Step]:
    """The `mixed_precision` report of a greedy fallback; (report, final score, chosen step).

    halves: (search, held-out) sample counts when the held-out check chose the result; the final score is
    then measured on all eval samples with `evaluate`, else it is the chosen step's own score.
    """
    task = evaluate.task
    chosen = result.steps[len(result.float_layers)]  # step i keeps i layers in float
    final_score = evaluate(result.model) if halves else chosen.score
    failures = budget.failures(final_score, task)
    tried = len(result.steps) - 1
    mixed: dict[str, Any] = {
        "float_layers": result.float_layers, "passed": not failures, "steps": result.report(),
        "max_float_layers": limit, "agreement": final_score["agreement"],
        "why": "these layers moved the outputs most when quantized (sensitivity ranking); kept in float "
               "one at a time until the accuracy budget held"}
    if halves:
        mixed["selection"] = (f"layers added on {halves[0]} search samples; how many to keep chosen by agreement on "
                              f"{halves[1]} held-out samples the search never saw; passed = budget on all "
                              f"{sum(halves)}")
        if len(result.float_layers) < tried:
            mixed["dropped_after_held_out_check"] = [st.layer for st in result.steps[len(result.float_layers) + 1:]]
    if failures:
        mixed["why_not_passed"] = (
            f"budget still missed (best: {'; '.join(failures)}, keeping {len(result.float_layers)} layer(s) "
            f"in float) after trying {tried} layer(s) one by one; limit {limit} "
            f"(--max-float-layers {max_option or 'default'}, never all {n_layers} quantizable layers) or the "
            "speed floor (--min-speedup) reached: the error is spread over many layers: relax the budget, add "
            "calibration data, or use fp16/QAT")
        log.warning("mixed precision: %s", mixed["why_not_passed"])
    return mixed, final_score, chosen


# The search's knobs, declared once for both mixed-precision passes (their command-line flags come from here).
SEARCH_OPTIONS: dict[str, PassOption] = {
    "max_float_layers": PassOption(
        whole_number(0), None, "most layers the mixed-precision fallback may keep in float (default: a quarter of the "
        "quantizable layers, at most 8: beyond that the model is no longer int8)", precisions=INT8_STATIC),
    "min_speedup": PassOption(
        float, None, "speed floor of the mixed-precision search: it keeps layers in float only while the model stays at "
        f"least this many times faster than fp32 on this host (default {DEFAULT_MIN_SPEEDUP:g} when this host has the "
        "profile's architecture, else none: an x86 host's timings do not stand for a Pi's; 0 = no floor, count "
        "layers instead)", precisions=INT8_STATIC),
    "sensitivity": PassOption(str, "auto", "per-layer sensitivity analysis: auto = when int8 misses the budget (default)",
                              choices=SENSITIVITY_MODES, precisions=INT8_STATIC),
    "sensitivity_samples": PassOption(whole_number(1), 64, "eval samples used to rank layers (default 64)",
                                      precisions=INT8_STATIC),
    "sensitivity_candidates": PassOption(
        whole_number(1), 16, "layers measured by exclusion; a model with more is pre-ranked cheaply by the activation "
        "error each layer adds and only the top N are measured (default 16)", precisions=INT8_STATIC),
}


@dataclass
class SearchSettings:
    """The values of SEARCH_OPTIONS for one conversion."""

    max_float_layers: int | None
    min_speedup: float
    sensitivity: str  # auto (when int8 misses the budget) | always | off
    sensitivity_samples: int
    sensitivity_candidates: int
    floor_note: str | None = None  # why no speed floor is enforced by default (cross-architecture)

    @classmethod
    def of(cls, config: Any, target_arch: str | None = None) -> "SearchSettings":
        """From a mixed-precision pass's config (any object with the SEARCH_OPTIONS attributes); an unset
        --min-speedup resolves against the profile's arch (converter/accuracy/speed_floor.py)."""
        values = {name: getattr(config, name) for name in SEARCH_OPTIONS}
        note = None
        if values["min_speedup"] is None:
            values["min_speedup"], note = resolve_min_speedup(None, target_arch or host_arch())
        return cls(**values, floor_note=note)


@dataclass
class MixedPrecisionOutcome:
    """What the search leaves: the pass's report entry, the measurements, the model when layers went float."""

    entry: dict[str, Any]
    sensitivity: dict[str, Any] | None = None  # measurements["sensitivity"]
    mixed: dict[str, Any] | None = None  # measurements["mixed_precision"]
    model: Any = None  # the mixed model, when the fallback kept layers in float
    result: FallbackResult | None = None
    floor: SpeedFloor | None = None  # fp32 and plain int8 timed against --min-speedup (when int8 missed the budget)

    @property
    def below_floor(self) -> bool:
        """Plain int8 missed the budget and ran below the speed floor in both timings: no search was run."""
        return self.floor is not None and self.floor.below


def search_mixed_precision(model: Any, evaluate: Evaluator, budget: Budget, settings: SearchSettings,
                           bind: Callable[[Dataset], LayerBinding], latency: Callable[[Any], float] | None,
                           unavailable: str | None = None, min_gain_samples: int | None = None,
                           fp32_model: Any = None, floor_latency: Callable[[Any], float] | None = None
                           ) -> MixedPrecisionOutcome:
    """Score the int8 `model`; when it misses the budget (or --sensitivity always), rank layers and keep the
    most sensitive in float one at a time until the budget holds.

    bind(sensitivity data) -> the runtime's LayerBinding. unavailable: why the fallback cannot run here
    (reported instead of searching). fp32_model: the float model in the candidates' format, timed for the
    speed floor (--min-speedup; default: the float model the evaluator compares with) with floor_latency (default
    `latency`; the passes give it more runs: a refusal rests on it). A fallback that still misses
    the budget is kept only when it beats plain int8 in a paired test on the inputs that chose it
    (converter/accuracy/paired.py); for scores without per-input hits and no held-out check, only if it fixes at
    least min_gain_samples more samples (timesteps for sequences).
    """
    task, data = evaluate.task, evaluate.data
    base = evaluate(model)
    reasons = budget.failures(base, task)
    out = MixedPrecisionOutcome({"task": task, "int8": base, "budget": vars(budget), "int8_passes": not reasons})
    if not wants_sensitivity(settings.sensitivity, reasons, out.entry):
        return out
    if unavailable:
        out.entry["sensitivity"] = unavailable
        log.warning("mixed precision not attempted: %s", unavailable)
        return out
    if reasons:
        _decide_floor(out, settings, reasons, floor_latency or latency, model,
                      fp32_model if fp32_model is not None else evaluate.float_model)
        if out.below_floor:  # nothing to spend: the caller refuses (or, with --force, keeps plain int8)
            return out
    fp32_ms, floor_ms = (out.floor.fp32_ms, out.floor.floor_ms) if out.floor else (None, None)
    split = len(data) >= 2 * HOLDOUT_MIN
    search_data, check_data = data.interleaved_halves() if split else (data, None)
    sens_data = search_data.head(settings.sensitivity_samples)
    binding = bind(sens_data)
    sens_eval = evaluate.on(sens_data) if len(sens_data) < len(data) else evaluate
    sens_base = sens_eval(model) if sens_eval is not evaluate else base
    k = max(1, settings.sensitivity_candidates)
    ranking, out.entry["sensitivity"], out.sensitivity = measure_sensitivity(binding, sens_eval, sens_base, sens_data, k)
    if not reasons:
        return out
    layers = binding.layers
    limit = float_layer_limit(settings.max_float_layers, len(layers), floor_ms is not None)
    log.warning("int8 misses the budget (%s); keeping sensitive layers in float (max %d of %d)",
                "; ".join(reasons), limit, len(layers))
    # Most sensitive first; layers that only matter together (a tensor shared by two quantized
    # nodes) show no gain alone, so the full ranking is walked, not just the layers that helped alone.
    order = [r["layer"] for r in ranking] + [r["layer"] for r in binding.prerank[k:]]
    fails = lambda s: budget.failures(s, task)  # noqa: E731
    walk = lambda ranking: (  # noqa: E731
        greedy_fallback(ranking, binding.build, evaluate.on(search_data), fails, limit, latency,
                        check=evaluate.on(check_data), max_latency_ms=floor_ms) if split else
        greedy_fallback(ranking, binding.build, evaluate, fails, limit, latency, start=(model, base),
                        max_latency_ms=floor_ms))
    result, walked = walk(order), "sensitivity"
    if not result.passed and layers[:limit] != order[:limit]:
        # Errors that only matter together: rounding noise near the input is amplified by every layer after it
        # (issue 14: int8 YOLOv8n's first 13 convs had to be float together). Walk input-first too; keep the better.
        prefix = walk(list(layers))
        if _outcome(prefix) > _outcome(result):
            result, walked = prefix, "input-first"
    mixed, final_score, chosen = fallback_report(result, evaluate, budget, limit, len(layers), settings.max_float_layers,
                                                 (len(search_data), len(check_data)) if split else None)
    mixed["order"] = walked
    if walked == "input-first":
        mixed["why"] = ("no layer helped enough alone (rounding noise near the input is amplified by every layer after "
                        "it): the first layers, input-first, kept in float until the accuracy budget held")
    _report_speed(mixed, result, fp32_ms, floor_ms, settings.min_speedup)
    if out.floor or settings.floor_note:
        mixed["speed_floor"] = out.entry["speed_floor"]
    gain = final_score["agreement"] - base["agreement"]
    _keep_real_gain_only(result, mixed, evaluate, gain, split, min_gain_samples)
    if result.float_layers:
        out.model = result.model
        mixed["agreement_gained"] = round(gain, 6)
        if chosen.latency_ms is not None and result.steps[0].latency_ms:
            mixed["latency_paid_ms"] = round(chosen.latency_ms - result.steps[0].latency_ms, 4)
    out.mixed, out.result, out.entry["mixed_precision"] = mixed, result, mixed
    return out


def _outcome(result: FallbackResult) -> tuple[bool, float, float]:
    """How good a walk's chosen step is: passes, then held-out (else search) agreement, then fewer float layers."""
    step = result.steps[len(result.float_layers)]
    score = step.check_score or step.score
    return result.passed, score["agreement"], -len(result.float_layers)


def _report_speed(mixed: dict[str, Any], result: FallbackResult, fp32_ms: float | None, floor_ms: float | None,
                  min_speedup: float) -> None:
    """The trade-off curve in the report: speed-up vs fp32 per step, and whether the speed floor ended the search."""
    if not fp32_ms:
        return
    mixed["fp32_latency_ms"] = round(fp32_ms, 4)
    mixed["min_speedup"] = min_speedup
    for row in mixed["steps"]:  # one row per layer kept in float: agreement vs speed
        if row.get("latency_ms"):
            row["speedup_vs_fp32"] = round(fp32_ms / row["latency_ms"], 3)
    last = result.steps[-1]
    if floor_ms and last.latency_ms and last.latency_ms > floor_ms:
        mixed["stopped_at_speed_floor"] = (f"keeping {len(result.steps) - 1} layers in float ran at "
                                           f"{fp32_ms / last.latency_ms:.2f}x fp32, below --min-speedup {min_speedup}")


def _decide_floor(out: MixedPrecisionOutcome, settings: SearchSettings, reasons: list[str],
                  latency: Callable[[Any], float] | None, model: Any, fp32_model: Any) -> None:
    """fp32 and plain int8 timed twice each against the floor (converter/accuracy/speed_floor.py), into `out`;
    no timing without a latency probe or a floor, and the reason into the report when none is enforced."""
    if settings.floor_note:
        out.entry["speed_floor"] = {"min_speedup": 0, "note": settings.floor_note}
        log.info("speed floor %s", settings.floor_note)
    if latency is None or settings.min_speedup <= 0:
        return
    min_speedup = settings.min_speedup
    out.floor = measure_floor(latency, fp32_model, model, min_speedup)
    out.entry["speed_floor"] = {**out.floor.to_dict(), "int8_misses": reasons}
    if out.floor.below:
        log.warning("mixed precision not attempted: plain int8 runs at %.2fx fp32 here, below --min-speedup %g in "
                    "both timings", out.floor.speedup, min_speedup)


def _keep_real_gain_only(result: FallbackResult, mixed: dict[str, Any], evaluate: Evaluator, gain: float, split: bool,
                         min_gain_samples: int | None) -> None:
    """A fallback that meets the budget is kept; one that misses it must at least beat plain int8 in the paired
    test (else plain int8 is kept); scores without per-input hits fall back to the min_gain_samples count."""
    verdict = _paired_verdict(result, mixed, split)
    if not result.float_layers or mixed["passed"]:
        return
    if verdict is False:
        _drop(result, mixed, _not_significant(mixed["paired_test"], len(result.float_layers)))
    elif verdict is None and min_gain_samples and not split:
        _drop_unclear_gain(result, mixed, evaluate, gain, min_gain_samples)


def _paired_verdict(result: FallbackResult, mixed: dict[str, Any], split: bool) -> bool | None:
    """Float layers vs plain int8 in a paired test on the inputs that chose them (the held-out half with a split,
    else the eval samples), recorded in the report; None when the scores carry no per-input hits."""
    if not result.float_layers:
        return None
    first, chosen = result.steps[0], result.steps[len(result.float_layers)]
    test = compare(first.check_score, chosen.check_score) if split else compare(first.score, chosen.score)
    if test is None:
        return None
    mixed["paired_test"] = {**test, "inputs": "held-out half (chose how many layers)" if split else "eval samples"}
    return test["better"]


def _not_significant(test: dict[str, Any], n_layers: int) -> str:
    return (f"keeping {n_layers} layer(s) in float won {test['wins']} and lost {test['losses']} of the inputs where it "
            f"and plain int8 disagree (p = {test['p_value']:.3g} > {test['alpha']:g}): not significantly better, "
            "plain int8 kept")


def _drop(result: FallbackResult, mixed: dict[str, Any], why: str) -> None:
    """Keep plain int8 instead of the fallback the search chose (the report keeps what it would have kept)."""
    mixed["not_kept"] = why
    log.warning("mixed precision: %s", why)
    mixed["best_float_layers"], mixed["float_layers"] = result.float_layers, []
    result.float_layers = []


def _drop_unclear_gain(result: FallbackResult, mixed: dict[str, Any], evaluate: Evaluator, gain: float,
                       min_gain_samples: int) -> None:
    """Scores without per-input hits (no paired test), without a held-out check: keep plain int8 when a fallback
    that still misses the budget fixes fewer than `min_gain_samples` more samples: within noise (on PP-OCR cls a
    +1-sample "gain" on the search set was -2.5 points held-out)."""
    task = evaluate.task
    # agreement is per sample, or per timestep for sequences ([N, T, C]): count in those units
    units = int(np.prod(evaluate.reference.shape[:2])) if task == "sequence" else len(evaluate.data)
    if gain * units >= min_gain_samples - 1e-9:
        return
    _drop(result, mixed, f"best fallback changed agreement by {gain:+.4f} ({gain * units:+.1f} of {units} "
                         f"{'timesteps' if task == 'sequence' else 'samples'}): within noise, plain int8 kept")
