"""Fold-input pass: an int8 image model takes whole grey levels, its normalisation folded into the first conv.

Runs before quantization (both formats) for int8-static image models: converter/onnx/fold_input.py does the
graph rewrite. The pass keeps one source of truth: the float reference, the calibration and eval data and the
manifest's preprocessing all move to grey levels together (scale 1, mean 0, std 1: the agent then feeds pixels),
and the fold is checked exact on calibration samples before anything is kept.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx

from ..onnx.fold_input import NotFoldable, fold_input, pixel_affine, to_pixels
from ..options import PassOption
from ..runners import run_model
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)
CHECK_SAMPLES = 4  # calibration samples the folded float model must reproduce
CHECK_TOLERANCE = 1e-3  # of the outputs' largest magnitude (float rounding: ~1e-6 measured on ImageNet CNNs)


class FoldInputPass(Pass):
    """Normalisation into the first conv, so int8 quantizes the input on the grey-level grid (nothing rounded)."""

    name = "fold-input"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"fold_input": PassOption(
            str, "auto", "int8 image models: fold --scale/--mean/--std (and Sub/Div/Mul/Add at the input) into the "
            "first conv, so the model takes grey levels 0..255 quantized with scale 1 (exact); the manifest's "
            "preprocessing becomes raw pixels. auto = int8-static models, when the model and data allow it (default); "
            "on = any precision (float bundles then take grey levels too); off", choices=("auto", "on", "off"))}

    def applies(self, ctx: ConversionContext) -> bool:
        o, pre = ctx.options, ctx.preprocess
        choice = self.config(ctx).fold_input
        return (ctx.float_model is not None and ctx.float_model.suffix == ".onnx" and ctx.calibration is not None
                and pre is not None and pre.kind == "image"
                and (choice == "on" or choice == "auto" and (o.precision or ctx.profile.precision.recipe) == "int8-static"))

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        from ..onnx.prequantized import is_prequantized

        model = onnx.load(str(ctx.float_model))
        if is_prequantized(model):
            return {"folded": False, "reason": "the model is already quantized"}
        pre, first = ctx.preprocess, ctx.inputs[0]
        if first.layout != "NCHW" or len(first.shape) != 4 or not isinstance(first.shape[1], int):
            return {"folded": False, "reason": f"input {first.name} is not NCHW"}
        channels = first.shape[1]
        a, b = pixel_affine(pre.scale, list(pre.mean), list(pre.std), channels)
        if self.config(ctx).fold_input == "auto" and not np.any(b) and np.allclose(a, a[0]) and not _graph_normalises(model):
            # pixels times one scale (e.g. / 255): zero stays zero and minmax over 0..255 is the grey-level grid already
            return {"folded": False, "reason": "the input is pixels times one scale, no mean: nothing to fold"}
        try:
            folded, info = fold_input(model, a, b, border_image=ctx.format == "tflite")  # PADV2 would run float
            data = {k: _pixels(d, first.name, info.scale, info.offset)
                    for k, d in (("calibration", ctx.calibration), ("evaluation", ctx.evaluation)) if d is not None}
        except NotFoldable as exc:
            log.info("input normalisation not folded: %s", exc)
            return {"folded": False, "reason": str(exc)}
        onnx.checker.check_model(folded)
        out = ctx.workdir / "float.pixels.onnx"
        onnx.save_model(folded, str(out), save_as_external_data=False)
        head = min(CHECK_SAMPLES, len(ctx.calibration))
        before = run_model(ctx.float_model, ctx.calibration.head(head))[0]
        after = run_model(out, data["calibration"].head(head))[0]
        diff = float(np.abs(before - after).max())
        if diff > CHECK_TOLERANCE * max(float(np.abs(before).max()), 1e-6):
            log.warning("folding the input normalisation changed the float outputs by %.3g; not folded", diff)
            return {"folded": False, "reason": f"the folded model's outputs differ by {diff:.3g}"}
        ctx.float_model = ctx.model = out
        ctx.calibration, ctx.evaluation = data["calibration"], data.get("evaluation")
        ctx.preprocess = dataclasses.replace(pre, scale=1.0, mean=[0.0], std=[1.0])
        ctx.pixel_input = info
        log.info("input normalisation folded into %s: the model takes grey levels (border %s)", info.conv, info.border)
        return {"folded": True, **info.to_dict(), "max_abs_output_change": diff,
                "preprocess": "the manifest's preprocessing is now raw pixels (scale 1, mean 0, std 1)"}


def _graph_normalises(model: onnx.ModelProto) -> bool:
    """Whether the graph input goes through Sub/Div/Mul/Add first (normalisation exported inside the model)."""
    name = model.graph.input[0].name
    return any(n.op_type in ("Sub", "Div", "Mul", "Add") and name in n.input for n in model.graph.node)


def _pixels(data, name: str, scale: list[float], offset: list[float]):
    """The dataset with its image input mapped back to grey levels (other inputs unchanged)."""
    inputs = dict(data.inputs)
    inputs[name] = to_pixels(inputs[name], scale, offset)
    return dataclasses.replace(data, inputs=inputs)
