"""Graph clean-up: constant folding and dead-node removal (onnxslim), then shape inference."""

from __future__ import annotations

import logging
from typing import Any

import onnx

from ..onnx.prequantized import is_prequantized, quantized_ops
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)


def keeps_quantization(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """An already-quantized model must keep every Q/DQ node through clean-up (folding one would drop its scales)."""
    a, b = quantized_ops(before), quantized_ops(after)
    return all(b.get(op, 0) >= n for op, n in a.items())


class CleanupPass(Pass):
    name = "cleanup"

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.float_model is not None and ctx.float_model.suffix == ".onnx"

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        src = ctx.float_model
        model = onnx.load(str(src))
        nodes_before = len(model.graph.node)
        out = ctx.workdir / "float.clean.onnx"
        tool = "onnxslim"
        try:
            import onnxslim

            slim = onnxslim.slim(model)
            onnx.checker.check_model(slim)
            if is_prequantized(model) and not keeps_quantization(model, slim):
                raise ValueError("it changed the model's QuantizeLinear/DequantizeLinear nodes")
        except Exception as exc:  # onnxslim is best effort: keep the original graph
            log.warning("onnxslim could not simplify the graph (%s); keeping it as exported", str(exc).splitlines()[0])
            slim, tool = model, "none"
        try:
            slim = onnx.shape_inference.infer_shapes(slim, strict_mode=False)
        except Exception as exc:
            log.warning("shape inference failed (%s); continuing without inferred shapes", exc)
        onnx.save_model(slim, str(out), save_as_external_data=False)
        ctx.float_model = ctx.model = out
        return {"tool": tool, "nodes_before": nodes_before, "nodes_after": len(slim.graph.node)}
