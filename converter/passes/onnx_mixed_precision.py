"""Accuracy-aware int8 for the ONNX path: measured calibration choice, per-layer sensitivity and a
greedy mixed-precision fallback that keeps the most sensitive layers in float until the budget holds.

The search logic is runtime-independent (converter.accuracy.calibration_choice, converter.accuracy.mixed_precision,
converter.accuracy.metrics); this module binds it to ONNX Runtime (converter.onnx.qdq_quantizer).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bench import time_runs

from ..accuracy.budget import Budget
from ..accuracy.calibration_choice import candidates, sample_warning, select_method
from ..data import Dataset
from ..accuracy.metrics import detect_task, score
from ..accuracy.mixed_precision import greedy_fallback, rank_by_exclusion
from ..onnx.model_io import ort_session, run_dataset
from ..onnx.activation_error import local_errors
from ..onnx.qdq_quantizer import OrtStaticQuantizer, quantizable_nodes
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)
OP_SET_SLOWDOWN = 1.5  # `weighted` QDQ may be at most this much slower (tiny nets: 5x; big ones: about equal)
PRERANK_SAMPLES = 8  # samples for the cheap activation-error pre-ranking
# With at least 2x this many eval samples, the fallback searches on one half and picks how many float
# layers to keep on the other: the greedy search otherwise fits its own samples (PP-OCR cls: +3 points on
# the search set, -1.5 on held-out images).
HOLDOUT_MIN = 25
STATE = "_int8_state"  # ctx.measurements key (not serialised): quantizer + chosen method


def task_of(ctx: ConversionContext) -> str:
    return detect_task(ctx.outputs[0].shape, bool(ctx.postprocess and ctx.postprocess.kind == "classification"))


def gate_data(ctx: ConversionContext) -> Dataset | None:
    if ctx.evaluation is not None:
        return ctx.evaluation
    return ctx.calibration.head(256) if ctx.calibration is not None else None


def budget_of(ctx: ConversionContext) -> Budget:
    o, acc = ctx.options, ctx.profile.accuracy
    return Budget(min_agreement=o.min_agreement if o.min_agreement is not None else acc.min_agreement,
                  max_top1_drop=o.max_accuracy_drop if o.max_accuracy_drop is not None else acc.max_top1_drop,
                  min_cosine=o.min_cosine)


def score_against_budget(ctx: ConversionContext, evaluate, task: str) -> tuple[Budget, dict[str, Any], list[str], dict[str, Any]]:
    """(budget, score of ctx.model, budget failures, report entry) - the start of every mixed-precision pass."""
    budget = budget_of(ctx)
    base = evaluate(ctx.model)
    reasons = budget.failures(base, task)
    return budget, base, reasons, {"task": task, "int8": base, "budget": vars(budget), "int8_passes": not reasons}


def wants_sensitivity(mode: str, reasons: list[str], entry: dict[str, Any]) -> bool:
    """--sensitivity auto|always|off: whether to rank layers (auto: only when int8 misses the budget)."""
    if mode == "off" or (mode == "auto" and not reasons):
        entry["sensitivity"] = "skipped (int8 meets the budget)" if mode == "auto" else "off"
        return False
    return True


def float_layer_limit(option: int | None, n_layers: int) -> int:
    """How many layers the fallback may keep in float.

    By default a quarter of the quantizable layers (at most 8): a model with most of its layers in float is
    no longer an int8 model, and broken calibration data must still fail the gate. An explicit
    --max-float-layers is the user's call, but never every layer (that is not an int8 model at all).
    """
    limit = option if option is not None else min(8, max(1, n_layers // 4))
    return min(limit, n_layers - 1)


def fallback_report(result, evaluate, budget: Budget, task: str, limit: int, n_layers: int, max_option: int | None,
                    halves: tuple[int, int] | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The `mixed_precision` report of a greedy fallback (ONNX and TFLite alike); (report, final score, chosen step).

    halves: (search, held-out) sample counts when the held-out check chose the result; the final score is
    then measured on all eval samples with `evaluate`, else it is the chosen step's own score.
    """
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
            f"(--max-float-layers {max_option or 'default: a quarter of the layers, at most 8'}, never all "
            f"{n_layers} quantizable layers): the error is spread over many layers: raise the limit, add "
            "calibration data, or use QAT")
        log.warning("mixed precision: %s", mixed["why_not_passed"])
    return mixed, final_score, chosen


class _Evaluator:
    """Scores candidate models against the float model's outputs on fixed data (computed once)."""

    def __init__(self, float_model: Path, data: Dataset, task: str) -> None:
        self.data, self.task = data, task
        self.reference = run_dataset(float_model, data)[0]

    def __call__(self, model: Path) -> dict[str, Any]:
        return score(self.reference, run_dataset(model, self.data)[0], self.task, self.data.labels)


def quantize_int8_measured(ctx: ConversionContext, src: Path, method_spec: str) -> dict[str, Any]:
    """int8-static via OrtStaticQuantizer; with several candidate methods, keep the best-scoring one."""
    o, prec = ctx.options, ctx.profile.precision
    q = OrtStaticQuantizer(src, ctx.workdir, ctx.calibration, o.calibration_samples, prec.per_channel,
                           prec.activation_type, prec.weight_type,
                           op_set=o.quantize_ops if o.quantize_ops != "auto" else "all")
    methods = candidates(method_spec)
    n = min(len(ctx.calibration), o.calibration_samples)
    warning = sample_warning(methods, n)
    if warning:
        log.warning(warning)
    data = gate_data(ctx)
    entry: dict[str, Any] = {"calibration_samples": n}
    if warning:
        entry["calibration_warning"] = warning
    if len(methods) > 1 and data is None:
        log.warning("--calibration-method %s needs eval data to compare methods; using %s", method_spec, prec.calibration_method)
        methods = [prec.calibration_method]
    if len(methods) == 1:
        ctx.model = q.quantize(methods[0], dst=ctx.workdir / "model.int8.onnx")
        chosen, table = methods[0], None
    else:
        evaluate = _Evaluator(ctx.float_model, data, task_of(ctx))
        ctx.measurements["_evaluator"] = evaluate
        sel = select_method(methods, q.quantize, evaluate)
        ctx.model, chosen, table = sel.model, sel.method, sel.table
        ctx.measurements["calibration_search"] = {"chosen": chosen, "task": evaluate.task, "samples": len(data),
                                                   "candidates": table}
    if o.quantize_ops == "auto" and data is not None:
        entry["op_set_search"] = _choose_op_set(ctx, q, chosen, data)
    entry["quantize_ops"] = q.op_set
    ctx.measurements[STATE] = {"quantizer": q, "method": chosen}
    entry.update(calibration_method=chosen, calibration_candidates=table)
    return entry


def _choose_op_set(ctx: ConversionContext, q: OrtStaticQuantizer, method: str, data: Dataset) -> dict[str, Any]:
    """Try QDQ on weight-carrying ops only vs on every op ORT can quantize; keep `weighted` when it agrees
    better with float and is not more than OP_SET_SLOWDOWN slower (on small nets the extra Q/DQ
    transitions can cost more than int8 saves)."""
    evaluate = ctx.measurements.get("_evaluator") or _Evaluator(ctx.float_model, data, task_of(ctx))
    ctx.measurements["_evaluator"] = evaluate
    base_model = ctx.model
    base = evaluate(base_model)
    cand_model = q.quantize(method, op_set="weighted")
    cand = evaluate(cand_model)
    row: dict[str, Any] = {"all": base, "weighted": cand, "chosen": "all"}
    # Strictly higher task agreement (not just lower error): ties keep `all` without timing anything,
    # so conversions stay reproducible unless the choice really matters.
    if cand["agreement"] > base["agreement"] and ctx.options.reproducible:
        # No wall-clock figure may decide what a --reproducible bundle contains: better agreement wins.
        row.update(chosen="weighted", note="--reproducible: chosen by agreement alone, latency not measured")
        q.op_set = "weighted"
        ctx.model = cand_model
    elif cand["agreement"] > base["agreement"]:
        threads = max(1, min(ctx.profile.runtime.threads, os.cpu_count() or 1))
        measure = _latency(threads, data.sample(0), 10)
        lat_all, lat_w = measure(base_model), measure(cand_model)
        lat_all = min(lat_all, measure(base_model))  # measured again after, so a load spike does not decide
        row.update(latency_ms={"all": lat_all, "weighted": lat_w})
        if lat_w <= OP_SET_SLOWDOWN * lat_all:
            row["chosen"] = "weighted"
            q.op_set = "weighted"
            ctx.model = cand_model
    log.info("quantized ops: %s (agreement all %.4f, weighted %.4f)", row["chosen"], base["agreement"], cand["agreement"])
    return row


def _latency(threads: int, feeds: dict[str, np.ndarray], runs: int):
    def measure(model: Path) -> float:
        sess = ort_session(model, threads)
        names = [x.name for x in sess.get_outputs()]
        _, samples = time_runs(lambda: sess.run(names, feeds), runs, 3)
        return round(float(np.median(samples)), 4)

    return measure


class MixedPrecisionPass(Pass):
    """Sensitivity ranking and greedy float fallback for int8-static ONNX models that miss the budget."""

    name = "mixed-precision"

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.precision == "int8-static" and STATE in ctx.measurements and gate_data(ctx) is not None

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o = ctx.options
        state = ctx.measurements[STATE]
        q: OrtStaticQuantizer = state["quantizer"]
        method = state["method"]
        data = gate_data(ctx)
        task = task_of(ctx)
        evaluate = ctx.measurements.get("_evaluator") or _Evaluator(ctx.float_model, data, task)
        budget, base, reasons, entry = score_against_budget(ctx, evaluate, task)
        if not wants_sensitivity(o.sensitivity, reasons, entry):
            return entry
        layers = quantizable_nodes(q.src)
        split = len(data) >= 2 * HOLDOUT_MIN
        search_data, check_data = data.interleaved_halves() if split else (data, None)
        sens_data = search_data.head(o.sensitivity_samples)
        sens_eval = _Evaluator(ctx.float_model, sens_data, task) if len(sens_data) < len(data) else evaluate
        sens_base = sens_eval(ctx.model) if sens_eval is not evaluate else base
        build = lambda exclude: q.quantize(method, exclude)  # noqa: E731
        k = max(1, o.sensitivity_candidates)
        prerank: list[dict[str, Any]] = []
        if len(layers) > k:
            # Many layers: rank all cheaply by the error each adds (one run of float and int8), then
            # measure only the top k by exclusion.
            prerank = local_errors(q.src, ctx.model, sens_data.head(PRERANK_SAMPLES), layers, ctx.workdir)
            log.info("pre-ranked %d layers by added activation error; measuring the top %d", len(layers), k)
        measured = [r["layer"] for r in prerank[:k]] if prerank else layers
        ranking = rank_by_exclusion(measured, build, sens_eval, sens_base)
        entry["sensitivity"] = {"signal": "output error with the layer alone kept in float",
                                "samples": len(sens_data), "layers": len(layers), "measured": len(measured),
                                "top": ranking[:10]}
        if prerank:
            entry["sensitivity"]["prerank"] = {"signal": "activation error added by the layer in the int8 model",
                                               "samples": min(len(sens_data), PRERANK_SAMPLES), "top": prerank[:10]}
        ctx.measurements["sensitivity"] = {"signal": "leave-one-float", "samples": len(sens_data), "ranking": ranking,
                                           "prerank": prerank}
        if not reasons:
            return entry
        limit = float_layer_limit(o.max_float_layers, len(layers))
        log.warning("int8 misses the budget (%s); keeping sensitive layers in float (max %d of %d)",
                    "; ".join(reasons), limit, len(layers))
        threads = max(1, min(ctx.profile.runtime.threads, os.cpu_count() or 1))
        latency = _latency(threads, data.sample(0), max(5, o.bench_runs // 2)) if o.bench_runs > 0 else None
        # Most sensitive first; layers that only matter together (a tensor shared by two quantized
        # nodes) show no gain alone, so the full ranking is walked, not just the layers that helped alone.
        order = [r["layer"] for r in ranking] + [r["layer"] for r in prerank[k:]]
        if split:
            search_eval, check_eval = _Evaluator(ctx.float_model, search_data, task), _Evaluator(ctx.float_model, check_data, task)
            result = greedy_fallback(order, build, search_eval, lambda s: budget.failures(s, task), limit, latency,
                                     check=check_eval)
        else:
            result = greedy_fallback(order, build, evaluate, lambda s: budget.failures(s, task), limit,
                                     latency, start=(ctx.model, base))
        mixed, final_score, chosen = fallback_report(result, evaluate, budget, task, limit, len(layers), o.max_float_layers,
                                                     (len(search_data), len(check_data)) if split else None)
        if result.float_layers:
            ctx.model = result.model
            ctx.precision = "int8-mixed"
            mixed["agreement_gained"] = round(final_score["agreement"] - base["agreement"], 6)
            if chosen.latency_ms is not None and result.steps[0].latency_ms:
                mixed["latency_paid_ms"] = round(chosen.latency_ms - result.steps[0].latency_ms, 4)
        ctx.measurements["mixed_precision"] = mixed
        entry["mixed_precision"] = mixed
        return entry
