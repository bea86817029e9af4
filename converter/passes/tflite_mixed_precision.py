"""Accuracy-aware int8 for the TFLite path: per-layer sensitivity and a greedy float fallback.

When a full-integer TFLite model misses the accuracy budget, the source it was quantized from
(Keras file, SavedModel, or the SavedModel onnx2tf wrote for ONNX sources) is calibrated once with
TensorFlow's QuantizationDebugger; its per-layer statistics (RMSE/scale) pre-rank the layers, the
top candidates are measured by keeping each alone in float (converter.accuracy.mixed_precision, the same
search as the ONNX path), and layers are then kept in float greedily until the budget holds
(precision `int8-mixed`, float32 I/O). The report entries match the ONNX path's
(`measurements.sensitivity`, `measurements.mixed_precision`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bench import time_runs

from ..data import Dataset
from ..accuracy.metrics import score
from ..accuracy.mixed_precision import greedy_fallback, rank_by_exclusion
from ..runners import run_model, runner
from ..tflite.model_io import feeds_in_layout
from .onnx_mixed_precision import (HOLDOUT_MIN, fallback_report, float_layer_limit, gate_data, score_against_budget,
                             task_of, wants_sensitivity)
from .base import ConversionContext, Pass
from .tflite_convert import TF_SOURCE

log = logging.getLogger(__name__)
PRERANK_SAMPLES = 8  # debug samples for the QuantizationDebugger's per-layer statistics
MIN_GAIN_SAMPLES = 2  # a fallback that misses the budget is kept only if it fixes at least this many more samples/timesteps


class _Evaluator:
    """Scores candidate .tflite models against the float model's outputs on fixed data."""

    def __init__(self, ctx: ConversionContext, data: Dataset, task: str) -> None:
        self.ctx, self.data, self.task = ctx, data, task
        self.reference = run_model(ctx.float_model, data, ctx.inputs, ctx.outputs)[0]

    def __call__(self, model: Path) -> dict[str, Any]:
        out = run_model(model, self.data, self.ctx.inputs, self.ctx.outputs)[0]
        return score(self.reference, out, self.task, self.data.labels)


def _feeds(ctx: ConversionContext, data: Dataset, n: int):
    """tf.lite dataset generator: the first n samples in the TFLite model's layout (onnx2tf: NHWC), float32."""

    def gen():
        for i in range(min(n, len(data))):
            yield [np.asarray(a, dtype=np.float32) for a in feeds_in_layout(data.sample(i), ctx.inputs)]

    return gen


def _latency(ctx: ConversionContext, data: Dataset, runs: int):
    threads = max(1, min(ctx.profile.runtime.threads, os.cpu_count() or 1))

    def measure(model: Path) -> float:
        call, _ = runner(model, data.sample(0), threads, ctx.inputs, ctx.outputs)
        _, samples = time_runs(call, runs, 3)
        return round(float(np.median(samples)), 4)

    return measure


class TFLiteMixedPrecisionPass(Pass):
    """Sensitivity ranking and greedy float fallback for int8-static TFLite models that miss the budget."""

    name = "tflite-mixed-precision"
    _q = None  # the TFLiteDenylistQuantizer of the current run (built lazily: it calibrates)

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.format == "tflite" and ctx.precision == "int8-static" and TF_SOURCE in ctx.measurements

    def _quantizer(self, ctx: ConversionContext, debug: Dataset):
        from ..tflite.denylist_quantizer import TFLiteDenylistQuantizer

        if self._q is None:
            kind, source = ctx.measurements[TF_SOURCE]
            n_cal = min(len(ctx.calibration), ctx.options.calibration_samples)
            self._q = TFLiteDenylistQuantizer(kind, Path(source), _feeds(ctx, ctx.calibration, n_cal),
                                              _feeds(ctx, debug, PRERANK_SAMPLES), ctx.workdir / "tflite-mixed",
                                              ctx.profile.precision.per_channel)
        return self._q

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        self._q = None
        entry: dict[str, Any] = {}
        data = gate_data(ctx)
        # the float model's outputs on the eval data, computed once for both steps
        evaluate = _Evaluator(ctx, data, task_of(ctx)) if data is not None else None
        if (ctx.options.io_dtype or "float32") == "float32" and ctx.reference_model is not None:
            entry["xnnpack"] = self._xnnpack_ops(ctx, data, evaluate)
        if data is None or evaluate is None:
            return entry
        entry.update(self._accuracy(ctx, data, evaluate))
        return entry

    def _xnnpack_ops(self, ctx: ConversionContext, data: Dataset | None, evaluate: "_Evaluator | None") -> dict[str, Any]:
        """Keep op types float whose int8 kernels XNNPACK does not take (more partitions than float)."""
        from ..tflite.denylist_quantizer import xnnpack_op_denylist, xnnpack_partitions

        float_parts, int8_parts = xnnpack_partitions(ctx.reference_model), xnnpack_partitions(ctx.model)
        row: dict[str, Any] = {"partitions_int8": int8_parts, "partitions_float": float_parts, "denylisted_ops": []}
        if int8_parts <= float_parts:
            return row
        q = self._quantizer(ctx, data if data is not None else ctx.calibration)
        row = xnnpack_op_denylist(q, ctx.model, float_parts)
        if row["denylisted_ops"] and row.get("partitions_after", int8_parts) >= int8_parts:
            row["note"] = "the op types that helped alone did not help together: plain int8 kept"
            q.denylisted_ops, row["denylisted_ops"] = [], []
        if row["denylisted_ops"]:
            candidate = q.build([])
            if evaluate is not None:
                row["agreement_int8"], row["agreement_after"] = evaluate(ctx.model)["agreement"], evaluate(candidate)["agreement"]
            row["why"] = ("LiteRT's XNNPACK delegate does not take these ops' int8 kernels, so the int8 graph was cut "
                          "into more partitions than the float one; they run in float (QUANTIZE/DEQUANTIZE around them)")
            ctx.model = candidate
            ctx.precision = "int8-mixed"
            log.info("TFLite int8: kept op types %s in float (XNNPACK partitions %d -> %d)", row["denylisted_ops"],
                     row["partitions_int8"], row.get("partitions_after", -1))
        ctx.measurements["xnnpack_op_denylist"] = row
        return row

    def _accuracy(self, ctx: ConversionContext, data: Dataset, evaluate: _Evaluator) -> dict[str, Any]:
        o = ctx.options
        task = evaluate.task
        budget, base, reasons, entry = score_against_budget(ctx, evaluate, task)
        if not wants_sensitivity(o.sensitivity, reasons, entry):
            return entry
        if (o.io_dtype or "float32") != "float32":
            entry["sensitivity"] = f"skipped: the deny-list fallback keeps float32 I/O, not --io-dtype {o.io_dtype}"
            log.warning("TFLite mixed precision needs float32 I/O; --io-dtype %s: not attempted", o.io_dtype)
            return entry
        from ..tflite.denylist_quantizer import float_layers_in

        split = len(data) >= 2 * HOLDOUT_MIN
        search_data, check_data = data.interleaved_halves() if split else (data, None)
        sens_data = search_data.head(o.sensitivity_samples)
        q = self._quantizer(ctx, sens_data)
        layers = q.layers()
        prerank = q.prerank()
        sens_eval = _Evaluator(ctx, sens_data, task) if len(sens_data) < len(data) else evaluate
        sens_base = sens_eval(ctx.model) if sens_eval is not evaluate else base
        k = max(1, o.sensitivity_candidates)
        measured = [r["layer"] for r in prerank[:k]]
        log.info("TFLite int8: %d quantized layers; measuring the top %d by exclusion", len(layers), len(measured))
        ranking = rank_by_exclusion(measured, q.build, sens_eval, sens_base)
        ops = {r["layer"]: r["op"] for r in prerank}
        for r in ranking:
            r["op"] = ops.get(r["layer"])
        entry["sensitivity"] = {"signal": "output error with the layer alone kept in float",
                                "tool": "tf.lite.experimental.QuantizationDebugger (denylisted_nodes)",
                                "samples": len(sens_data), "layers": len(layers), "measured": len(measured),
                                "top": ranking[:10],
                                "prerank": {"signal": "RMSE/scale of the layer's int8 output vs float (debugger layer statistics)",
                                            "samples": min(len(sens_data), PRERANK_SAMPLES), "top": prerank[:10]}}
        ctx.measurements["sensitivity"] = {"signal": "leave-one-float", "samples": len(sens_data), "ranking": ranking,
                                           "prerank": prerank, "format": "tflite"}
        if not reasons:
            return entry
        limit = float_layer_limit(o.max_float_layers, len(layers))
        log.warning("TFLite int8 misses the budget (%s); keeping sensitive layers in float (max %d of %d)",
                    "; ".join(reasons), limit, len(layers))
        latency = _latency(ctx, data, max(5, o.bench_runs // 2)) if o.bench_runs > 0 else None
        order = [r["layer"] for r in ranking] + [r["layer"] for r in prerank[k:]]
        if split:  # as on the ONNX path: search on one half, choose how many layers to keep on the other
            result = greedy_fallback(order, q.build, _Evaluator(ctx, search_data, task), lambda s: budget.failures(s, task),
                                     limit, latency, check=_Evaluator(ctx, check_data, task))
        else:
            result = greedy_fallback(order, q.build, evaluate, lambda s: budget.failures(s, task), limit, latency,
                                     start=(ctx.model, base))
        mixed, final_score, chosen = fallback_report(result, evaluate, budget, task, limit, len(layers), o.max_float_layers,
                                                     (len(search_data), len(check_data)) if split else None)
        final_failures = not mixed["passed"]
        gain = final_score["agreement"] - base["agreement"]
        # agreement is per sample, or per timestep for sequences ([N, T, C]): count in those units
        units = int(np.prod(evaluate.reference.shape[:2])) if task == "sequence" else len(data)
        if result.float_layers and final_failures and not split and gain * units < MIN_GAIN_SAMPLES - 1e-9:
            # Too few eval samples for a held-out check: a miss that is not a clear improvement keeps plain
            # int8 (on PP-OCR cls a +1-sample "gain" on the search set was -2.5 points held-out).
            mixed["not_kept"] = (f"best fallback changed agreement by {gain:+.4f} ({gain * units:+.1f} of {units} "
                                 f"{'timesteps' if task == 'sequence' else 'samples'}): within noise, plain int8 kept")
            log.warning("TFLite mixed precision: %s", mixed["not_kept"])
            mixed["best_float_layers"], mixed["float_layers"] = result.float_layers, []
            result.float_layers = []
        if result.float_layers:
            ctx.model = result.model
            ctx.precision = "int8-mixed"
            if q.denylisted_ops:
                mixed["denylisted_ops"] = list(q.denylisted_ops)
            mixed["agreement_gained"] = round(gain, 6)
            if chosen.latency_ms is not None and result.steps[0].latency_ms:
                mixed["latency_paid_ms"] = round(chosen.latency_ms - result.steps[0].latency_ms, 4)
            mixed["float_layer_dtypes"] = float_layers_in(result.model, result.float_layers)
        ctx.measurements["mixed_precision"] = mixed
        entry["mixed_precision"] = mixed
        return entry
