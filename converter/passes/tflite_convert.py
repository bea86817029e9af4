"""TFLite conversion pass: the float source -> a TFLite model at the requested precision.

ONNX/PyTorch sources go through onnx2tf (tflite_onnx2tf), Keras and SavedModel sources through
tf.lite.TFLiteConverter, and an existing .tflite is re-packaged as it is (its precision is
read from the file, never re-quantized).

Manifest precisions: fp32 | fp16 (float16 weights) | int8-dynamic (dynamic-range int8) |
int8-static (full-integer int8 calibrated on the user's data; --io-dtype float32|int8|uint8).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from device_profiles import RUNTIME_FOR_FORMAT

from ..errors import FormatError, UsageError
from ..options import PassOption
from ..tflite.model_io import representative_dataset, tflite_specs
from .base import ConversionContext, Pass
from .context import TFSource

log = logging.getLogger(__name__)
TFLITE_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")


def detect_tflite_precision(path: Path) -> str:
    """Best guess of an existing .tflite file's precision from its tensor types and ops."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(path, threads=1, use_xnnpack=False)
    io = [np.dtype(d["dtype"]) for d in it.get_input_details()]
    tensors = it.get_tensor_details()
    dtypes = {np.dtype(t["dtype"]).name for t in tensors}
    ops = {o.get("op_name") for o in it._get_ops_details()} if hasattr(it, "_get_ops_details") else set()
    if any(d in (np.int8, np.uint8) for d in io) or "QUANTIZE" in ops:
        return "int8-static"
    if "int8" in dtypes:
        return "int8-dynamic"
    if "float16" in dtypes:
        return "fp16"
    return "fp32"


def _source_outputs_for_onnx(ctx: ConversionContext):
    """ONNX outputs with rank-4 tensors marked NCHW (what onnx2tf transposes)."""
    return [dataclasses.replace(t, layout="NCHW") if len(t.shape) == 4 else t for t in ctx.outputs]


class TFLiteConvertPass(Pass):
    """The float source -> a TFLite model at the requested precision (onnx2tf or tf.lite.TFLiteConverter)."""

    name = "tflite-convert"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        from .quantize_onnx import CALIBRATION_METHOD_OPTION, COMPENSATION_OPTION

        return {"calibration_method": CALIBRATION_METHOD_OPTION,
                "io_dtype": PassOption(str, None, "TFLite int8-static model input/output type (default float32; "
                                       "int8/uint8 record scale/zero point)", choices=("float32", "int8", "uint8")),
                "compensation": COMPENSATION_OPTION}

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o = ctx.options
        precision = o.precision or ctx.profile.precision.recipe
        io_dtype = self.config(ctx).io_dtype or "float32"
        ctx.format, ctx.runtime = "tflite", RUNTIME_FOR_FORMAT["tflite"]
        if ctx.float_model is not None and ctx.float_model.suffix == ".onnx":
            from ..onnx.prequantized import is_prequantized

            if is_prequantized(onnx.load(str(ctx.float_model), load_external_data=False)):
                raise FormatError(f"{o.source} is already quantized (QDQ ONNX): it converts to ONNX bundles only "
                                      "(--format onnx), which keep its own scales")
        if ctx.imported.source_format == "tflite":
            return _repackage(ctx)
        if precision not in TFLITE_PRECISIONS:
            raise FormatError(f"TFLite bundles support {', '.join(TFLITE_PRECISIONS)}, not {precision}")
        if precision == "int8-static" and ctx.calibration is None:
            raise UsageError(
                "full-integer int8 TFLite needs calibration data: pass --calibration FILE.npz|IMAGE_FOLDER, "
                "or choose --precision fp32|fp16|int8-dynamic")
        if precision != "int8-static" and io_dtype != "float32":
            log.warning("--io-dtype %s applies to int8-static only; %s keeps float32 I/O", io_dtype, precision)
            io_dtype = "float32"
        ctx.precision = precision
        methods = tflite_methods(ctx) if precision == "int8-static" else []  # a method TFLite cannot do: exit 2 here
        entry: dict[str, Any] = {"precision": precision, "io_dtype": io_dtype}
        if ctx.imported.onnx_path is not None:
            entry.update(_from_onnx(ctx, precision, io_dtype, self.config(ctx).compensation, methods))
        else:
            entry.update(_from_tensorflow(ctx, precision, io_dtype, methods))
        if precision == "int8-static":
            entry["calibration_samples"] = min(len(ctx.calibration), o.calibration_samples)
        entry["inputs"] = [f"{t.name} {t.dtype}{t.shape} {t.layout}" + (f" (source {t.source_layout})" if t.source_layout else "")
                           for t in ctx.inputs]
        entry["outputs"] = [f"{t.name} {t.dtype}{t.shape} {t.layout}" for t in ctx.outputs]
        return entry


def tflite_methods(ctx: ConversionContext) -> list[str]:
    """The calibration methods this TFLite int8 conversion tries (converter/tflite/calibration.py): one, or the
    candidates of auto / a list, compared on the eval data; UsageError (exit 2) for a method TFLite cannot do."""
    from ..tflite.calibration import tflite_methods as methods

    return methods(ctx.options.pass_options.get("calibration_method"), ctx.profile.precision.calibration_method)


def _scorer(ctx: ConversionContext, src_in: list, src_out: list) -> Callable[[Path], dict[str, Any]] | None:
    """Scores a candidate .tflite against float on the eval data (None without data): the specs become the
    candidate's (its layout) before the evaluator runs it."""
    if ctx.gate_data()[0] is None:
        return None

    def evaluate(model: Path) -> dict[str, Any]:
        ctx.inputs, ctx.outputs = tflite_specs(model, src_in, src_out)
        return ctx.evaluator()(model)

    return evaluate


def _calibration_entry(chosen: str, search: dict[str, Any] | None) -> dict[str, Any]:
    from ..tflite.calibration import label

    return {"calibration_method": label(chosen), **({"calibration_search": search} if search else {})}


def _repackage(ctx: ConversionContext) -> dict[str, Any]:
    """An existing .tflite is packaged as it is; its precision is read from the file."""
    detected = detect_tflite_precision(ctx.imported.tflite_path)
    asked = ctx.options.precision
    if asked and asked != detected:
        log.warning("--precision %s ignored: an existing .tflite is re-packaged as it is (%s)", asked, detected)
    ctx.precision = detected
    ctx.model = ctx.workdir / "model.tflite"
    shutil.copyfile(ctx.imported.tflite_path, ctx.model)
    ctx.reference_model = ctx.model
    return {"tool": "none (re-packaged)", "precision": detected}


def _from_onnx(ctx: ConversionContext, precision: str, io_dtype: str, compensation: str = "none",
               methods: list[str] | None = None) -> dict[str, Any]:
    """ONNX/PyTorch sources through onnx2tf (its SavedModel is kept for the mixed-precision pass); int8 calibrated
    with each of `methods` (the best on the eval data kept), then with per-channel weights the weight compensation
    (converter/tflite/compensation.py) on the chosen method."""
    from ..tflite.calibration import choose_method, quantile_of
    from ..tflite.onnx2tf import onnx2tf_version, onnx_to_tflite

    src_in, src_out = list(ctx.inputs), _source_outputs_for_onnx(ctx)
    per_channel = ctx.profile.precision.per_channel
    pixels = ctx.pixel_input is not None  # fold-input: grey levels on scale 1, stem re-centred (tflite/pixel_grid.py)
    fill = list(ctx.pixel_input.fill) if pixels else None

    def build(method: str | None, work: Path, src: Path | None = None):
        return onnx_to_tflite(src or ctx.float_model, work, precision, src_in, ctx.calibration,
                              ctx.options.calibration_samples, io_dtype, per_channel, pixels, fill,
                              quantile_of(method) if method else None)

    chosen, search = None, None
    if precision == "int8-static":
        result, chosen, search = choose_method(methods or ["minmax"], build, lambda r: r.model,
                                               _scorer(ctx, src_in, src_out), ctx.workdir)
    else:
        result = build(None, ctx.workdir)
    quantile = quantile_of(chosen) if chosen else None
    ctx.model, ctx.reference_model = result.model, result.float32
    if result.saved_model is not None:
        ctx.tf_source = TFSource("savedmodel", result.saved_model, io_dtype, quantile)
    ctx.inputs, ctx.outputs = tflite_specs(ctx.model, src_in, src_out)
    rename_output_roles(ctx, [t.name for t in src_out])
    entry = {"tool": f"onnx2tf {onnx2tf_version()}", "seconds_convert": result.seconds, "per_channel": per_channel,
             "variants_written": result.files, **(_calibration_entry(chosen, search) if chosen else {})}
    if pixels and precision == "int8-static":
        from ..tflite.pixel_grid import input_grid

        entry["pixel_input_quantization"] = input_grid(ctx.model)  # read back from the file: scale 1 expected
        entry["stem_recentred"] = {k: result.pixel_grid[k] for k in ("stem", "stem_bias_shift") if k in result.pixel_grid}
    if precision == "int8-static" and per_channel:
        from ..tflite.compensation import compensate_tflite

        entry["compensation"] = compensate_tflite(ctx, compensation, lambda src, work: build(chosen, work, src), io_dtype)
    return entry


def rename_output_roles(ctx: ConversionContext, source_names: list[str]) -> None:
    """The TFLite file may name its outputs otherwise (int8: `PartitionedCall:0`): roles follow by position."""
    post = ctx.postprocess
    new = [t.name for t in ctx.outputs]
    if post is None or post.kind not in ("detection", "classification") or len(new) != len(source_names):
        return
    options = dict(post.options)  # a copy: --format auto candidates share the import's postprocess
    for role in ("output", "boxes_output", "scores_output"):
        name = options.get(role)
        if isinstance(name, str) and name in source_names and name not in new:
            options[role] = new[source_names.index(name)]
    ctx.postprocess = dataclasses.replace(post, options=options)


def _from_tensorflow(ctx: ConversionContext, precision: str, io_dtype: str, methods: list[str] | None = None
                     ) -> dict[str, Any]:
    """Keras and SavedModel sources through tf.lite.TFLiteConverter (int8: each of `methods`, the best kept)."""
    from ..importers.tensorflow_model import convert_tf, import_tensorflow
    from ..tflite.calibration import choose_method, quantile_of
    from ..tflite.pixel_grid import pixel_grid

    kind = ctx.imported.source_format
    tf = import_tensorflow()
    t0 = time.perf_counter()
    n_cal = min(len(ctx.calibration), ctx.options.calibration_samples) if ctx.calibration is not None else 0
    rep = representative_dataset(ctx.calibration, n_cal, ctx.inputs) if precision == "int8-static" else None

    def build(method: str | None, work: Path) -> Path:
        work.mkdir(parents=True, exist_ok=True)
        out = work / f"model.{precision}.tflite"
        with pixel_grid(False, quantile=quantile_of(method) if method else None):  # linearquantile ranges (no fold here)
            convert_tf(kind, ctx.imported.tf_source, out, precision, rep, io_dtype)
        return out

    chosen, search = None, None
    if precision == "int8-static":
        ctx.model, chosen, search = choose_method(methods or ["minmax"], build, lambda p: p,
                                                  _scorer(ctx, list(ctx.inputs), list(ctx.outputs)), ctx.workdir)
        ctx.tf_source = TFSource(kind, ctx.imported.tf_source, io_dtype, quantile_of(chosen))
    else:
        ctx.model = build(None, ctx.workdir)
    ctx.reference_model = ctx.imported.tflite_path
    ctx.inputs, ctx.outputs = tflite_specs(ctx.model, list(ctx.inputs), list(ctx.outputs))
    return {"tool": f"tf.lite.TFLiteConverter (tensorflow {tf.__version__})",
            "seconds_convert": round(time.perf_counter() - t0, 3), **(_calibration_entry(chosen, search) if chosen else {})}
