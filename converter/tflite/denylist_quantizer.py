"""TFLite int8 with a deny-list: TensorFlow's QuantizationDebugger bound to the mixed-precision search.

The source (a Keras file or a SavedModel folder - for ONNX sources the SavedModel onnx2tf wrote)
is calibrated once on the user's calibration data; every candidate is then the same calibrated
model re-quantized with `QuantizationDebugOptions(denylisted_nodes=[...])`, which keeps those
layers (named by their output tensors) in float32 with QUANTIZE/DEQUANTIZE around them. I/O stays
float32. The debugger's per-layer statistics (quantized vs float output of each layer, with the
layer's inputs taken from the float path) give a cheap pre-ranking: RMSE over the output scale.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ConversionError
from ..importers.tensorflow_model import import_tensorflow, tflite_converter
from .model_io import outputs_in_signature_order, stdout_to_stderr
from .pixel_grid import pixel_grid

log = logging.getLogger(__name__)
Feeds = Callable[[], Iterable[list[np.ndarray]]]


class TFLiteDenylistQuantizer:
    """Calibrate a TF source once; build int8 TFLite models with chosen layers kept in float."""

    def __init__(self, kind: str, source: Path, representative: Feeds, debug_data: Feeds, workdir: Path,
                 per_channel: bool = True, pixel_input: bool = False, stem_fill: list[float] | None = None,
                 quantile: float | None = None) -> None:
        tf = import_tensorflow()
        self.tf, self.workdir = tf, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        conv = tflite_converter(kind, source)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv._experimental_disable_per_channel = not per_channel  # same switch the debugger reads
        options = tf.lite.experimental.QuantizationDebugOptions()
        try:
            # the fold's grey levels on scale 1, the stem re-centred, linearquantile ranges (pixel_grid.py)
            self.grid: dict = {}
            with stdout_to_stderr(), pixel_grid(pixel_input, stem_fill, self.grid, quantile):
                self.debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=debug_data, debug_options=options)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ConversionError(f"TFLite quantization debugger failed on {source}: {first}") from exc
        self._stats: list[dict[str, Any]] | None = None
        self._calibrated = {False: self.debugger.calibrated_model, True: self.grid.get("unshifted")}
        self._cache: dict[tuple[str, ...], Path] = {}
        self.denylisted_ops: list[str] = []  # op types kept float in every build (see xnnpack_op_denylist)
        self.keep_float: list[str] = []  # layers kept float in every build (a detector's decode head)
        self.layer_stats()  # before any deny-list changes the debugger's options

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per quantized layer (model order): op, tensor name, RMSE, scale and RMSE/scale on the debug data."""
        if self._stats is None:
            with stdout_to_stderr():
                self.debugger.run()
                buf = io.StringIO()
                self.debugger.layer_statistics_dump(buf)
            buf.seek(0)
            rows = []
            for r in csv.DictReader(buf):
                rmse = math.sqrt(max(float(r["mean_squared_error"]), 0.0))
                scale = float(r["scale"])
                rows.append({"layer": r["tensor_name"], "op": r["op_name"], "rmse": round(rmse, 8), "scale": round(scale, 8),
                             "rmse/scale": round(rmse / scale, 6) if scale > 0 else None,
                             "max_abs_error": round(float(r["max_abs_error"]), 8)})
            self._stats = rows
        return self._stats

    def layers(self) -> list[str]:
        """Names (output tensors) of the layers the quantizer can keep in float, in model order."""
        return [r["layer"] for r in self.layer_stats()]

    def prerank(self) -> list[dict[str, Any]]:
        """Layers by RMSE/scale, largest first (how many quantization steps of error each layer adds)."""
        return sorted(self.layer_stats(), key=lambda r: r["rmse/scale"] or 0.0, reverse=True)

    def build(self, float_layers: list[str]) -> Path:
        """The int8 model with `float_layers` kept in float32 (cached per set of layers)."""
        layers = tuple(sorted({*float_layers, *self.keep_float}))
        key = (*layers, *(f"op:{op}" for op in sorted(self.denylisted_ops)))
        if key in self._cache:
            return self._cache[key]
        if self.grid.get("stem"):  # a float stem keeps its own bias: the re-centring is for its int8 weights only
            self.debugger.calibrated_model = self._calibrated[self.grid["stem"] in layers]
        self.debugger.options = self.tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(layers) or None, denylisted_ops=sorted(self.denylisted_ops) or None)
        with stdout_to_stderr():
            content = self.debugger.get_nondebug_quantized_model()
        tag = hashlib.sha256("\n".join(key).encode()).hexdigest()[:12] if key else "int8"
        out = self.workdir / f"model.mixed-{tag}.tflite"
        out.write_bytes(content)
        outputs_in_signature_order(out)
        self._cache[key] = out
        return out


def float_layers_in(model: Path, layers: list[str]) -> dict[str, str]:
    """{layer: dtype of its output tensor} in a built .tflite file (to prove what stayed float)."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model, threads=1, use_xnnpack=False)
    by_name = {d["name"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    return {name: by_name.get(name, "missing") for name in layers}


def op_types(model: Path) -> list[str]:
    """Builtin op types in a .tflite file (sorted, without QUANTIZE/DEQUANTIZE)."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model, threads=1, use_xnnpack=False)
    return sorted({o["op_name"] for o in it._get_ops_details()} - {"QUANTIZE", "DEQUANTIZE", "DELEGATE"})


def xnnpack_partitions(model: Path) -> int:
    """How many XNNPACK partitions LiteRT cuts the model into (each boundary is a hand-off to builtin kernels)."""
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    return TFLiteModel(model, 1).delegate_nodes


def xnnpack_op_denylist(q: TFLiteDenylistQuantizer, int8_model: Path, float_partitions: int) -> dict[str, Any]:
    """Op types whose int8 kernels XNNPACK does not take: keeping them float re-joins the partitions.

    Each op type of the int8 model is deny-listed alone; those that lower the partition count are kept
    (all together) in q.denylisted_ops. Deterministic (partition counts, no timing). On PP-OCR cls/rec
    with LiteRT 2.3.0 this is HARD_SWISH: int8 cls 29 -> 11 partitions, 3.1 -> 0.57 ms (fp32 0.65 ms).
    """
    before = xnnpack_partitions(int8_model)
    row: dict[str, Any] = {"partitions_int8": before, "partitions_float": float_partitions, "tried": {}}
    if before <= float_partitions:
        row["denylisted_ops"] = []
        return row
    saved, chosen = list(q.denylisted_ops), []
    for op in op_types(int8_model):
        q.denylisted_ops = [*saved, op]
        n = xnnpack_partitions(q.build([]))
        row["tried"][op] = n
        if n < before:
            chosen.append(op)
    q.denylisted_ops = [*saved, *chosen]
    row["denylisted_ops"] = chosen
    if chosen:
        row["partitions_after"] = xnnpack_partitions(q.build([]))
    log.info("XNNPACK partitions: int8 %d, float %d; op types kept float: %s", before, float_partitions, chosen or "none")
    return row
