"""Mixed precision for int8-static ONNX models that miss the accuracy budget.

Binds the runtime-neutral search (converter.accuracy.mixed_precision) to ONNX Runtime: layers are the
weight-carrying nodes with the activation after them (converter.onnx.layer_groups), a candidate is the same cached calibration re-quantized with `nodes_to_exclude`
(converter.onnx.qdq_quantizer), and a model with many layers is pre-ranked cheaply by the activation
error each layer adds (converter.onnx.activation_error) before the top ones are measured.
"""

from __future__ import annotations

from typing import Any

from ..accuracy.mixed_precision import SEARCH_OPTIONS, SearchSettings, search_mixed_precision
from ..accuracy.sensitivity import PRERANK_SAMPLES, LayerBinding
from ..accuracy.speed_floor import enforce_floor
from ..data import Dataset
from ..onnx.activation_error import local_errors
from ..onnx.layer_groups import layer_groups
from ..onnx.qdq_quantizer import quantizable_nodes
from ..options import PassOption
from .base import ConversionContext, Pass
from .context import OrtInt8Hand


def ort_layer_binding(ctx: ConversionContext, hand: OrtInt8Hand, data: Dataset, candidates: int) -> LayerBinding:
    """The ORT quantizer as the search sees it; layers beyond `candidates` are pre-ranked by added error."""
    q, method = hand.quantizer, hand.method
    layers = [n for n in quantizable_nodes(q.src) if n not in q.keep_float]
    groups = layer_groups(q.src, layers)
    prerank: list[dict[str, Any]] = []
    if len(layers) > candidates:
        prerank = local_errors(q.src, ctx.model, data.head(PRERANK_SAMPLES), layers, ctx.workdir, groups,
                               ctx.exact_int8())
    return LayerBinding(layers, lambda exclude: q.quantize(method, [n for layer in exclude for n in groups[layer]]),
                        prerank, prerank_signal="activation error added by the layer (with its activation) in the "
                        "int8 model")


class MixedPrecisionPass(Pass):
    """Sensitivity ranking and greedy float fallback for int8-static ONNX models that miss the budget."""

    name = "mixed-precision"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return dict(SEARCH_OPTIONS)

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.precision == "int8-static" and ctx.ort_int8 is not None and ctx.gate_data()[0] is not None

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        settings = SearchSettings.of(self.config(ctx), ctx.profile.hardware.arch)
        hand = ctx.ort_int8
        out = search_mixed_precision(
            ctx.model, ctx.evaluator(), ctx.budget(), settings,
            lambda data: ort_layer_binding(ctx, hand, data, max(1, settings.sensitivity_candidates)),
            ctx.search_latency_probe(), floor_latency=ctx.search_latency_probe(ctx.options.bench_runs))
        enforce_floor(out.entry, ctx.measurements, ctx.options.command, ctx.options.force, ctx.precision)
        ctx.take_mixed_precision(out)
        return out.entry
