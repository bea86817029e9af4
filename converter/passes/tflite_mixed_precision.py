"""Accuracy-aware int8 for the TFLite path: the XNNPACK op deny-list, per-layer sensitivity and a greedy
float fallback.

When a full-integer TFLite model misses the accuracy budget, the source it was quantized from
(Keras file, SavedModel, or the SavedModel onnx2tf wrote for ONNX sources) is calibrated once with
TensorFlow's QuantizationDebugger; its per-layer statistics (RMSE/scale) pre-rank the layers, the
top candidates are measured by keeping each alone in float, and layers are then kept in float
greedily until the budget holds (converter.accuracy.mixed_precision, the same search as the ONNX
path; precision `int8-mixed`, float32 I/O). The report entries match the ONNX path's
(`measurements.sensitivity`, `measurements.mixed_precision`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..accuracy.evaluator import Evaluator
from ..accuracy.mixed_precision import SEARCH_OPTIONS, SearchSettings, search_mixed_precision
from ..accuracy.sensitivity import PRERANK_SAMPLES, LayerBinding
from ..accuracy.speed_floor import enforce_floor
from ..data import Dataset
from ..options import PassOption
from ..tflite.model_io import representative_dataset
from .base import ConversionContext, Pass

if TYPE_CHECKING:
    from ..tflite.denylist_quantizer import TFLiteDenylistQuantizer

log = logging.getLogger(__name__)
MIN_GAIN_SAMPLES = 2  # a fallback that misses the budget is kept only if it fixes at least this many more samples/timesteps
Quantizer = Callable[[Dataset], "TFLiteDenylistQuantizer"]


def lazy_quantizer(ctx: ConversionContext) -> Quantizer:
    """The deny-list quantizer of one run, built on first use (it calibrates: slow) with that use's debug data."""
    built: list[TFLiteDenylistQuantizer] = []

    def get(debug: Dataset) -> TFLiteDenylistQuantizer:
        from ..tflite.denylist_quantizer import TFLiteDenylistQuantizer

        if not built:
            n_cal = min(len(ctx.calibration), ctx.options.calibration_samples)
            built.append(TFLiteDenylistQuantizer(
                ctx.tf_source.kind, ctx.tf_source.path, representative_dataset(ctx.calibration, n_cal, ctx.inputs),
                representative_dataset(debug, PRERANK_SAMPLES, ctx.inputs), ctx.workdir / "tflite-mixed",
                ctx.profile.precision.per_channel, pixel_input=ctx.pixel_input is not None,
                stem_fill=list(ctx.pixel_input.fill) if ctx.pixel_input is not None else None,
                quantile=ctx.tf_source.quantile))  # the calibration tflite-convert chose
        return built[0]

    return get


def xnnpack_op_denylist_step(ctx: ConversionContext, quantizer: Quantizer, data: Dataset | None,
                             evaluate: Evaluator | None) -> dict[str, Any]:
    """Keep op types float whose int8 kernels XNNPACK does not take (more partitions than float)."""
    from ..tflite.denylist_quantizer import xnnpack_op_denylist, xnnpack_partitions

    float_parts, int8_parts = xnnpack_partitions(ctx.reference_model), xnnpack_partitions(ctx.model)
    row: dict[str, Any] = {"partitions_int8": int8_parts, "partitions_float": float_parts, "denylisted_ops": []}
    if int8_parts <= float_parts:
        return row
    q = quantizer(data if data is not None else ctx.calibration)
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


def float_head_step(ctx: ConversionContext, quantizer: Quantizer, data: Dataset | None) -> dict[str, Any]:
    """Detectors: int8 body, float decode head (converter.detection.head): one int8 output tensor for pixel
    coordinates and probabilities rounds every score to zero (issue 14: TFLite int8 YOLOv8 gave no boxes)."""
    from ..detection.head import tflite_head_tensors

    q = quantizer(data if data is not None else ctx.calibration)
    layers = set(q.layers())
    head = [t for t in tflite_head_tensors(q.build([])) if t in layers]
    if not head:
        return {"layers": 0, "note": "no flattening head found: the whole model stays int8"}
    q.keep_float = head
    ctx.model = q.build([])
    log.info("TFLite int8 detector: %d head layers kept in float", len(head))
    return {"layers": len(head), "tool": "QuantizationDebugger denylisted_nodes",
            "why": "box decode and class scores keep float precision (int8 body, float head)"}


WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def tflite_layer_binding(quantizer: Quantizer, data: Dataset) -> LayerBinding:
    """The debugger's quantizer as the search sees it: layers are output tensors, pre-ranked by RMSE/scale; a
    weighted layer carries its activation ops along (converter.accuracy.layer_groups: a float conv whose SiLU stays
    int8 still rounds its output)."""
    from ..tflite.layer_groups import tflite_layer_groups

    q = quantizer(data)
    weighted = [r["layer"] for r in q.layer_stats() if r["op"] in WEIGHTED_OPS]
    groups = tflite_layer_groups(q.build([]), weighted)
    members = {m for g in groups.values() for m in g[1:]}
    # the fold's grey-level tensors (input PAD/ADD) are exact on the scale-1 grid: float there buys nothing
    skip = members | set(q.keep_float) | set(getattr(q, "grid", {}).get("tensors", []))
    worst = {r["layer"]: r for r in q.layer_stats()}
    prerank = []
    for r in q.prerank():
        if r["layer"] not in skip:
            grouped = [worst[m]["rmse/scale"] or 0.0 for m in groups.get(r["layer"], []) if m in worst]
            prerank.append({**r, "rmse/scale": max([r["rmse/scale"] or 0.0, *grouped])})
    prerank.sort(key=lambda r: r["rmse/scale"], reverse=True)
    return LayerBinding([n for n in q.layers() if n not in skip],
                        lambda keep: q.build([m for n in keep for m in groups.get(n, [n])]), prerank,
                        prerank_signal="RMSE/scale of the layer's (or its activation's) int8 output vs float "
                        "(debugger layer statistics)",
                        tool="tf.lite.experimental.QuantizationDebugger (denylisted_nodes)")


class TFLiteMixedPrecisionPass(Pass):
    """XNNPACK op deny-list, then sensitivity ranking and greedy float fallback for int8-static TFLite models."""

    name = "tflite-mixed-precision"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return dict(SEARCH_OPTIONS)

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.format == "tflite" and ctx.precision == "int8-static" and ctx.tf_source is not None

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        from ..tflite.denylist_quantizer import float_layers_in

        entry: dict[str, Any] = {}
        quantizer = lazy_quantizer(ctx)
        data, _ = ctx.gate_data()
        evaluate = ctx.evaluator()  # the float model's outputs on the eval data, computed once for both steps
        io_dtype = ctx.tf_source.io_dtype
        if ctx.task() == "detection" and io_dtype == "float32":
            entry["float_head"] = float_head_step(ctx, quantizer, data)
        if io_dtype == "float32" and ctx.reference_model is not None:
            entry["xnnpack"] = xnnpack_op_denylist_step(ctx, quantizer, data, evaluate)
        if evaluate is None:
            return entry
        unavailable = (None if io_dtype == "float32" else
                       f"skipped: the deny-list fallback keeps float32 I/O, not --io-dtype {io_dtype}")
        out = search_mixed_precision(ctx.model, evaluate, ctx.budget(), SearchSettings.of(self.config(ctx), ctx.profile.hardware.arch),
                                     lambda sens_data: tflite_layer_binding(quantizer, sens_data),
                                     ctx.search_latency_probe(), unavailable, MIN_GAIN_SAMPLES,
                                     fp32_model=ctx.reference_model,
                                     floor_latency=ctx.search_latency_probe(ctx.options.bench_runs))
        enforce_floor(out.entry, ctx.measurements, ctx.options.command, ctx.options.force, ctx.precision)
        if out.model is not None:  # what the file really keeps float: deny-listed op types, layer output dtypes
            q = quantizer(data)
            if q.denylisted_ops:
                out.mixed["denylisted_ops"] = list(q.denylisted_ops)
            out.mixed["float_layer_dtypes"] = float_layers_in(out.model, out.result.float_layers)
        ctx.take_mixed_precision(out, format="tflite")
        entry.update(out.entry)
        return entry
