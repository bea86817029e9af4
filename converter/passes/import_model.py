"""Import pass: load the source, describe its inputs/outputs, load calibration/eval data."""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.bundle import Postprocess, Preprocess

from ..data import load_dataset, warn_if_degenerate
from ..errors import DataError
from ..importers import import_model
from ..onnx.model_io import tensor_specs
from ..options import PassOption, float_list, input_shape
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)


class ImportPass(Pass):
    """Load the source model, describe its inputs/outputs and preprocessing, load calibration/eval data."""

    name = "import"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {
            "input_shape": PassOption(input_shape, None, "input shape, e.g. 1x3x224x224: required for PyTorch sources; "
                                      "pins dynamic ONNX input dims"),
            "opset": PassOption(int, None, "ONNX opset for PyTorch export (default 20)"),
            "color": PassOption(str, "RGB", "colour order the model expects", choices=("RGB", "BGR", "GRAY")),
            "scale": PassOption(float, 1.0 / 255.0, "pixel scale before mean/std (default 1/255)"),
            "mean": PassOption(float_list, (0.0,), "per-channel mean, comma-separated (after scale)"),
            "std": PassOption(float_list, (1.0,), "per-channel std, comma-separated (after scale)"),
            "resize": PassOption(str, "bilinear", "how images are resized to the input size (default bilinear)",
                                 choices=("bilinear", "nearest", "letterbox")),
            "layout": PassOption(str, None, "input layout (default: guessed from the shape)", choices=("NCHW", "NHWC")),
            "top_k": PassOption(int, 5, "classes the agent reports (default 5)"),
            "postprocess": PassOption(str, "classification", "postprocessing the agent applies", flag=""),
        }

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, cfg = ctx.options, self.config(ctx)
        ctx.imported = import_model(o.source, ctx.workdir, cfg.input_shape, cfg.opset)
        if ctx.imported.onnx_path is not None:
            ctx.float_model = ctx.model = ctx.imported.onnx_path
            ctx.inputs, ctx.outputs = tensor_specs(ctx.float_model, cfg.layout)
        else:  # Keras / SavedModel / .tflite: the float32 TFLite reference describes the model
            from ..tflite.model_io import tflite_specs

            ctx.float_model = ctx.model = ctx.imported.tflite_path
            ctx.inputs, ctx.outputs = tflite_specs(ctx.float_model)
        first = ctx.inputs[0]
        if len(first.shape) == 4 and first.layout in ("NCHW", "NHWC"):
            h, w = (first.shape[2], first.shape[3]) if first.layout == "NCHW" else (first.shape[1], first.shape[2])
            channels = first.shape[1] if first.layout == "NCHW" else first.shape[3]
            if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
                color = "GRAY" if channels == 1 else cfg.color
                ctx.preprocess = Preprocess(kind="image", color=color, size=[h, w], resize=cfg.resize, scale=cfg.scale,
                                            mean=list(cfg.mean), std=list(cfg.std))
        if ctx.preprocess is None:
            ctx.preprocess = Preprocess(kind="none")
        ctx.postprocess = Postprocess(kind=cfg.postprocess, softmax=True, top_k=cfg.top_k)
        if o.calibration:
            ctx.calibration = load_dataset(o.calibration, ctx.inputs, ctx.preprocess, o.labels, o.calibration_samples)
            warn_if_degenerate(ctx.calibration, "calibration")
        if o.evaluation:
            ctx.evaluation = load_dataset(o.evaluation, ctx.inputs, ctx.preprocess, o.labels, o.calibration_samples)
        if ctx.evaluation is None and ctx.calibration is not None:
            log.warning("no --eval data: the accuracy gate compares float vs converted outputs on the calibration data")
        if o.labels and ctx.evaluation is not None and ctx.evaluation.labels is not None:
            if int(ctx.evaluation.labels.max()) >= len(o.labels):
                raise DataError(f"eval labels go up to {int(ctx.evaluation.labels.max())} but only {len(o.labels)} label names were given")
        return {
            "source": o.source,
            "source_format": ctx.imported.source_format,
            "opset": ctx.imported.opset,
            **({"details": ctx.imported.details} if ctx.imported.details else {}),
            "inputs": [f"{t.name} {t.dtype}{t.shape} {t.layout}" for t in ctx.inputs],
            "outputs": [f"{t.name} {t.dtype}{t.shape}" for t in ctx.outputs],
            "calibration_samples": len(ctx.calibration) if ctx.calibration else 0,
            "eval_samples": len(ctx.evaluation) if ctx.evaluation else 0,
        }
