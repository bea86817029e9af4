"""Accuracy gate: the converted model against the float model on the eval set.

Classification outputs: top-1 agreement with float, and top-1 accuracy of both when labels are
given. Other outputs: max-abs difference and mean cosine similarity (maps and sequences: their task agreement
too). A bundle serving raw outputs (postprocess `none`) has every output gated. A conversion that loses
more than the budget (profile, or --max-accuracy-drop / --min-agreement) is refused unless
--force; the numbers are reported either way.
"""

from __future__ import annotations

import logging
import math
import shlex
from dataclasses import replace
from typing import Any

import numpy as np

from edge_agent.pipeline.postprocess import are_probabilities

from ..accuracy.budget import non_finite_reasons
from ..accuracy.metrics import agreement, cosine, detect_task, hits, non_finite_counts, norm_ratio, scale_reason
from ..errors import GateFailed
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, classification: bool) -> dict[str, Any]:
    """The gate's metrics for one output tensor (first axis = sample)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    diff = np.abs(ref - cand)
    m: dict[str, Any] = {
        "samples": int(len(ref)),
        "max_abs_diff": round(float(diff.max()), 6) if np.isfinite(diff).all() else None,  # null: NaN/inf answers
        "mean_cosine": round(float(cosine(ref, cand).mean()), 6),
        **non_finite_counts(ref, cand),
    }
    if classification:
        ref_top, cand_top = ref.argmax(1), cand.argmax(1)
        m["top1_agreement"] = round(float(hits(ref, cand, "classification").mean()), 6)
        if labels is not None:
            m["float_top1_accuracy"] = round(float((ref_top == labels).mean()), 6)
            m["converted_top1_accuracy"] = round(float((cand_top == labels).mean()), 6)
            m["top1_drop_points"] = round(100.0 * (m["float_top1_accuracy"] - m["converted_top1_accuracy"]), 4)
    else:
        m["norm_ratio"] = norm_ratio(ref, cand)
    return m


def task_metrics(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, task: str,
                 classification: bool) -> dict[str, Any]:
    """compare_outputs plus the agreement of the output's task (maps: IoU, sequences: per-timestep argmax)."""
    metrics = compare_outputs(reference, candidate, labels, classification)
    if task in ("map", "sequence"):
        a = agreement(reference, candidate, task)
        metrics.update(agreement=round(a.pop("agreement"), 6), agreement_metric=a.pop("metric"), **a)
    elif "top1_agreement" in metrics:
        a = agreement(reference, candidate, "classification")
        metrics.update({k: a[k] for k in ("clear_share", "clear_agreement") if k in a})
    return metrics


def gates_every_output(ctx: ConversionContext) -> bool:
    """A raw-output bundle (postprocess `none`) serves every output, so each is gated, not only the first: int8 or
    fp16 could break a hand model's presence score or a pose model's mask beside landmarks the gate passed."""
    return ctx.postprocess is not None and ctx.postprocess.kind == "none" and len(ctx.outputs) > 1


def other_outputs(ctx: ConversionContext, data: Any, candidates: list[np.ndarray],
                  budget: Any) -> tuple[dict[str, Any], list[str]]:
    """The metrics and failures of every output but the served one (`candidates`: the converted model's outputs)."""
    served, metrics, reasons = ctx.served_output(), {}, []
    pairs = zip(ctx.run_all_outputs(ctx.float_model, data), candidates)
    for i, (spec, (ref, cand)) in enumerate(zip(ctx.outputs, pairs)):
        if i != served:
            m = metrics[spec.name] = task_metrics(ref, cand, None, detect_task(spec.shape, False), False)
            reasons += [f"output {spec.name}: {r}" for r in
                        gate_failures(m, budget.max_top1_drop, budget.min_agreement, budget.min_cosine)]
    return metrics, reasons


def _every_output(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The served output's metrics, then those of the other outputs a raw-output bundle serves."""
    return [m, *m.get("other_outputs", {}).values()]


def is_classification(ctx: ConversionContext) -> bool:
    out = ctx.outputs[ctx.served_output()]
    return bool(ctx.postprocess and ctx.postprocess.kind == "classification" and len(out.shape) == 2)


def _generic(m: dict[str, Any]) -> bool:
    """Metrics of a generic output: no task agreement, judged by cosine and magnitude."""
    return "top1_agreement" not in m and "agreement" not in m


def gate_failures(m: dict[str, Any], max_drop: float, min_agreement: float, min_cosine: float) -> list[str]:
    """Human-readable reasons the metrics break the budget (empty when they hold)."""
    reasons = non_finite_reasons(m)
    if "top1_drop_points" in m and m["top1_drop_points"] > max_drop:
        reasons.append(f"top-1 accuracy dropped {m['top1_drop_points']:.2f} points (budget {max_drop:.2f})")
    if "top1_agreement" in m and m["top1_agreement"] < min_agreement:
        clear = (f"; {m['clear_agreement']:.2%} on the {m['clear_share']:.0%} of inputs where float's answer is clear"
                 if "clear_agreement" in m else "")
        reasons.append(f"top-1 agreement with float is {m['top1_agreement']:.2%} (budget >= {min_agreement:.2%}{clear})")
    if "top1_agreement" not in m and "agreement" in m and m["agreement"] < min_agreement:
        reasons.append(f"{m['agreement_metric']} with float is {m['agreement']:.2%} (budget >= {min_agreement:.2%})")
    elif _generic(m) and m["mean_cosine"] < min_cosine:
        reasons.append(f"mean cosine similarity with float is {m['mean_cosine']:.4f} (budget >= {min_cosine})")
    if _generic(m) and (why := scale_reason(m.get("norm_ratio"))):
        reasons.append(why)
    return reasons


def way_forward(ctx: ConversionContext, m: dict[str, Any]) -> str:
    """What the user can do about a miss, as exact command lines: accept this candidate's figures, or go fp16."""
    every = _every_output(m)
    if any(non_finite_reasons(o) for o in every):  # no budget accepts NaN answers, and fp16 is where overflows come from
        return "Nothing to accept: fix the data or the model's overflow first; --force writes it as is"
    if any(_generic(o) and scale_reason(o.get("norm_ratio")) for o in every):
        return "Nothing to accept: no budget takes answers at another scale; --force writes it as is"
    base = ["edge-convert", *ctx.options.command] if ctx.options.command else ["edge-convert", "convert", "..."]
    budget, parts = ctx.budget(), []
    if m.get("top1_drop_points", 0.0) > budget.max_top1_drop:
        parts.append(f"top1-drop:{math.ceil(m['top1_drop_points'] * 10 + 1e-9) / 10:g}")
    values = [v for o in every if (v := o.get("top1_agreement", o.get("agreement"))) is not None]
    if values and min(values) < budget.min_agreement:
        parts.append(f"agreement:{math.floor(min(values) * 100) / 100:g}")
    if not parts:
        parts.append(f"cosine:{math.floor(min(o['mean_cosine'] for o in every) * 1000) / 1000:g}")
    accept = ",".join(parts)
    mixed = ctx.measurements.get("mixed_precision") or {}
    speed = next((f", {r['speedup_vs_fp32']:.2f}x fp32 on this host" for r in mixed.get("steps", [])
                  if r.get("layer") == (mixed.get("float_layers") or [None])[-1] and r.get("speedup_vs_fp32")), "")
    return (f"Best candidate ({ctx.precision}{speed}) written nowhere. To accept it: {shlex.join(base + ['--accuracy-budget', accept])}"
            f" ; to keep float's answers instead: {shlex.join(base + ['--precision', 'fp16'])} (or QAT: converter.qat)"
            " ; --force writes it as is")


class AccuracyGatePass(Pass):
    """The converted model against the float model on the gate data; refuses what breaks the budget."""

    name = "accuracy-gate"

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o = ctx.options
        data, origin = ctx.gate_data()
        if data is None:
            log.warning("accuracy not checked: pass --eval data to gate the conversion")
            ctx.measurements["accuracy"] = {"checked": False}
            return {"checked": False, "reason": "no eval or calibration data"}
        if ctx.task() == "detection":
            return self.gate_detector(ctx, origin)
        reference = ctx.evaluator().reference  # the float outputs, computed once with the mixed-precision passes
        # a raw-output bundle gates every output: the converted model runs once for all of them, not twice
        candidates = ctx.run_all_outputs(ctx.model, data) if gates_every_output(ctx) else None
        candidate = candidates[ctx.served_output()] if candidates is not None else ctx.run_first_output(ctx.model, data)
        metrics = task_metrics(reference, candidate, data.labels, ctx.task(), is_classification(ctx))
        if is_classification(ctx) and ctx.postprocess.softmax and are_probabilities(reference.reshape(len(reference), -1)):
            # the model ends in its own softmax: served as it answers. An int8 model's probabilities (steps of 1/256)
            # missed a sum of 1 by more than the device's tolerance and were softmaxed again: score 0.23 for 0.97,
            # and `drift` (output.confidence PSI 13) against the float model's reference on unchanged scenes
            ctx.postprocess = replace(ctx.postprocess, softmax=False)
            metrics["outputs"] = "probabilities"
        metrics["data"] = origin
        budget = ctx.budget()
        reasons = gate_failures(metrics, budget.max_top1_drop, budget.min_agreement, budget.min_cosine)
        if candidates is not None:
            metrics["other_outputs"], more = other_outputs(ctx, data, candidates, budget)
            reasons = reasons + more
        metrics.update(budget={"max_top1_drop": budget.max_top1_drop, "min_agreement": budget.min_agreement,
                               "min_cosine": budget.min_cosine}, passed=not reasons, forced=bool(reasons and o.force))
        return self.decide(ctx, metrics, reasons)

    def gate_detector(self, ctx: ConversionContext, origin: str) -> dict[str, Any]:
        """Detectors: the boxes the device would draw, converted vs float (and vs labels), not raw tensors."""
        evaluate = ctx.evaluator()
        metrics = evaluate(ctx.model)
        metrics = {"samples": len(evaluate.data), **metrics, "data": origin,
                   "agreement_metric": metrics.pop("metric")}
        budget = ctx.budget()
        reasons = budget.failures({**metrics, "metric": metrics["agreement_metric"]}, "detection")
        metrics.update(budget={"min_agreement": budget.min_agreement, "max_map_drop": budget.max_map_drop},
                       passed=not reasons, forced=bool(reasons and ctx.options.force))
        return self.decide(ctx, metrics, reasons)

    def decide(self, ctx: ConversionContext, metrics: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
        """Record the figures (the report is written even when the gate refuses), then refuse or warn."""
        o = ctx.options
        ctx.measurements["accuracy"] = {"checked": True, "precision": ctx.precision, **metrics}
        if reasons:
            message = f"{ctx.precision} model fails the accuracy gate: " + "; ".join(reasons)
            if not o.force:
                raise GateFailed(message + ". " + way_forward(ctx, metrics))
            log.warning("%s; writing it anyway because of --force", message)
        return metrics
