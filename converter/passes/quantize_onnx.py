"""Quantize/convert the float ONNX model per the profile's precision recipe (ONNX Runtime tools).

int8-static   QDQ, calibration data from the user, per-channel weights, method minmax/entropy/percentile/
              distribution or auto (measured choice; see onnx_mixed_precision.py)
int8-dynamic  weights int8, activations quantized at run time (quantize_dynamic)
int4-weight   MatMul/Gemm weights in 4-bit blocks (MatMulNBits), activations and Conv float (weight_only.py)
fp16          float16 weights and activations, float32 I/O (GPU profiles)
fp32          unchanged
int8-qat      (not a recipe) the model already carries QuantizeLinear/DequantizeLinear (QAT export, another
              tool): its own scales are kept, never re-quantized; see keep_prequantized
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from ..errors import ConversionError
from ..onnx.prequantized import describe, float_twin, is_prequantized
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)
MIN_CALIBRATION_SAMPLES = 16


def quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def preprocess_for_quantization(ctx: ConversionContext):
    """ORT's quant_pre_process (symbolic shape inference + optimisation); fall back when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.workdir / "float.prep.onnx"
    try:
        quant_pre_process(str(ctx.float_model), str(out), skip_symbolic_shape=False)
        return out, "quant_pre_process"
    except Exception as exc:
        dynamic = any(not isinstance(d, int) or d <= 0 for t in ctx.inputs for d in t.shape)
        hint = (" The model has dynamic input dims: pin them with --input-shape (e.g. 1x3x640x640)." if dynamic else "")
        log.warning("quant_pre_process failed (%s: %s); quantizing the cleaned graph without it.%s", exc.__class__.__name__,
                    (str(exc).splitlines() or [""])[0][:160], hint)
        return ctx.float_model, "skipped"


def fold_graph(src, out):
    """Exact Conv/affine/HardSwish folds that remove re-quantization points (converter/onnx/fold_affine.py)."""
    from ..onnx.fold_affine import fold_for_quantization

    try:
        model, counts = fold_for_quantization(onnx.load(str(src)))
        if not any(counts.values()):
            return src, []
        onnx.checker.check_model(model)
        onnx.save_model(model, str(out), save_as_external_data=False)
    except Exception as exc:  # best effort: quantize the unfolded graph
        log.warning("graph folding before quantization failed (%s); quantizing without it", str(exc).splitlines()[0][:160])
        return src, []
    return out, [f"folded {n} {what.replace('_', ' ')}" for what, n in counts.items() if n]


def keep_prequantized(ctx: ConversionContext, model: onnx.ModelProto, recipe: str, explicit: bool) -> dict[str, Any]:
    """Package an already-quantized model as it is (precision int8-qat); its float twin becomes the reference.

    int8-static / fp32 (asked for, or the profile's recipe) and a profile's fp16/int8-dynamic keep the model's
    own QDQ: re-quantizing would replace trained scales with calibrated ones and round twice. An explicit
    --precision fp16 or int8-dynamic is refused: the user should convert the float model for that.
    """
    info = describe(model)
    counts = ", ".join(f"{n} {op}" for op, n in info["ops"].items())
    if explicit and recipe in ("fp16", "int8-dynamic"):
        raise ConversionError(
            f"{ctx.options.source} is already quantized ({counts}); --precision {recipe} would not undo that: "
            "convert the float model for fp16/int8-dynamic, or drop --precision to keep the model's own int8")
    src = ctx.float_model
    reference = "float twin (weights dequantized, activation Q/DQ pairs -> Clip to their range: no rounding)"
    try:
        twin = ctx.workdir / "float.twin.onnx"
        tm = float_twin(model)
        onnx.checker.check_model(tm)
        onnx.save_model(tm, str(twin), save_as_external_data=False)
        ctx.float_model = twin
    except Exception as exc:  # QOperator graphs etc.: gate/benchmark compare the model with itself
        reference = f"the model itself (no float twin: {str(exc).splitlines()[0][:120]})"
        log.warning("no float reference for the pre-quantized model (%s); the accuracy gate compares it with itself",
                    str(exc).splitlines()[0][:120])
    ctx.model = src
    ctx.precision = "int8-qat"
    log.info("model is already quantized (%s): keeping its own scales, not re-quantizing (recipe %s %s)", counts,
             recipe, "asked for" if explicit else f"of profile {ctx.profile.name}")
    note = (f"already quantized ({counts}): the model's own QDQ scales are kept and it is not re-quantized "
            f"({recipe} {'asked for' if explicit else 'is the profile recipe'})")
    if ctx.calibration is not None:
        note += "; --calibration data not used (the model's ranges are kept)"
    ctx.measurements["quantization"] = {"origin": "model (pre-quantized QDQ, e.g. QAT)", **info}
    return {"recipe": "int8-qat", "requested": recipe, "note": note, "reference": reference, **info}


class QuantizePass(Pass):
    name = "quantize"

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, prec = ctx.options, ctx.profile.precision
        recipe = o.precision or prec.recipe
        ctx.precision = recipe
        model = onnx.load(str(ctx.float_model))
        if is_prequantized(model):
            return keep_prequantized(ctx, model, recipe, explicit=o.precision is not None)
        if recipe == "fp32":
            return {"recipe": "fp32", "note": "model kept in float32"}
        if recipe == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(ctx.float_model)), keep_io_types=True)
            out = ctx.workdir / "model.fp16.onnx"
            onnx.save_model(model, str(out), save_as_external_data=False)
            ctx.model = out
            return {"recipe": "fp16", "io": "float32", "tool": "onnxruntime.transformers.float16"}
        if recipe == "int4-weight":
            from ..onnx.weight_only_int4 import quantize_weight_only

            out = ctx.workdir / "model.int4w.onnx"
            result = quantize_weight_only(ctx.float_model, out)
            ctx.model = out
            return {"recipe": "int4-weight", **result.to_dict()}
        if recipe == "int8-dynamic":
            from onnxruntime.quantization import quantize_dynamic

            out = ctx.workdir / "model.int8dyn.onnx"
            quantize_dynamic(str(ctx.float_model), str(out), per_channel=prec.per_channel, weight_type=quant_type("int8"))
            ctx.model = out
            return {"recipe": "int8-dynamic", "weight_type": "int8", "per_channel": prec.per_channel}
        # int8-static
        if ctx.calibration is None:
            raise ConversionError(
                f"profile {ctx.profile.name} asks for int8-static, which needs calibration data: pass --calibration "
                "FILE.npz|IMAGE_FOLDER, or choose --precision fp32|fp16|int8-dynamic"
            )
        method = o.calibration_method or prec.calibration_method
        src, prep = preprocess_for_quantization(ctx)
        # Accuracy-aware path (converter/passes/onnx_mixed_precision.py): cached calibration, measured method choice.
        from ..onnx.qdq_quantizer import prepare_for_qdq
        from .onnx_mixed_precision import quantize_int8_measured

        src, folds = fold_graph(src, ctx.workdir / "float.folded.onnx")
        src, notes = prepare_for_qdq(src, ctx.workdir / "float.qdq-ready.onnx")
        notes = folds + notes
        measured = quantize_int8_measured(ctx, src, method)
        return {
            "recipe": "int8-static", "format": "QDQ", **measured,
            "per_channel": prec.per_channel, "activation_type": prec.activation_type,
            "weight_type": prec.weight_type, "pre_process": prep, "graph_changes": notes,
        }
