"""TFLite int8 of a folded image model (fold-input): the grey-level input quantized on its own grid, scale 1.

After the fold the model takes whole grey levels 0..255. The ONNX path forces their quantization (scale 1, zero point
0; converter/onnx/qdq_quantizer.py). TensorFlow's converter has no option to fix an input's range: it calibrates
min/max on the representative data and derives scale = (max - min) / 255. Photos that reach black and white give
exactly 1.0; a calibration set that never reaches white (a dim scene, a few crops) gives a scale below 1, and every
grey level above the calibrated maximum is clipped while the others land off the integer grid.

The fix sits where TensorFlow keeps the statistics: the calibrated float model (Calibrator.calibrate's output, the
one input both its quantizers read: onnx2tf's TFLiteConverter call and the QuantizationDebugger's re-quantization)
gets min 0 / max 255 on the pixel tensors (the graph input and the PAD/ADD chain the fold put before the first conv),
so the quantizer itself derives scale 1 and zero point -128 (int8) or 0 (uint8 I/O) and computes the first conv's
bias scale from it. Nothing is patched after quantization.

The same place re-centres the stem, as the ONNX path does after rounding (fold_input.correct_rounded_stem): grey
levels are all positive (mean ~120), so the first conv's weight rounding error dW times the input has a constant part
dW * mean pixel per output channel that the normalised model never had. The calibrated model's float bias gets
b - sum(dW * fill), with dW from the grid the quantizer will use (per output channel max |w| / 127, nearest), so its
int32 bias comes out re-centred. Weights that already sit on that grid (GPTQ-compensated) give dW = 0. A build that
keeps the stem float must use the calibrated model without the shift (TFLiteDenylistQuantizer does).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import numpy as np

from .model_io import op_name, tensor_name

log = logging.getLogger(__name__)
PIXEL_RANGE = (0.0, 255.0)
CHAIN_OPS = {"PAD", "PADV2", "ADD"}  # what fold-input puts between the grey-level input and the first conv


def pixel_tensors(model) -> list[int]:
    """Indices (subgraph 0) of the grey-level tensors: the image input and the PAD/ADD chain up to the first CONV_2D."""
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        return []
    out, tensor = [int(graph.inputs[0])], int(graph.inputs[0])
    while True:
        users = [op for op in graph.operators if tensor in list(op.inputs)]
        if len(users) != 1:
            return out
        op = users[0]
        name = op_name(model, op)
        if name not in CHAIN_OPS:
            return out
        if name == "ADD":  # the fold's border image: the other operand is a constant (a tensor with data)
            other = [int(i) for i in op.inputs if int(i) != tensor]
            if len(other) != 1 or not _is_constant(model, graph.tensors[other[0]]):
                return out
        tensor = int(op.outputs[0])
        out.append(tensor)


def _is_constant(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and (buf.data is not None and len(buf.data) > 0 or getattr(buf, "size", 0) > 0)


def _floats(model, tensor) -> np.ndarray | None:
    """A constant float32 tensor's values (None if it is not one)."""
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if tensor.type != 0 or buf is None or buf.data is None or len(buf.data) == 0:  # TensorType.FLOAT32 = 0
        return None
    return np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float32).reshape(tuple(tensor.shape)).copy()


def recentre_stem(model, pixels: list[int], fill: list[float]) -> tuple[str, float] | None:
    """Shift the float bias of the CONV_2D reading the last pixel tensor by -sum(dW * fill) (in place); returns (its
    output tensor, the largest shift) or None when there is no such conv with constant float weights and bias."""
    graph = model.subgraphs[0]
    conv = next((op for op in graph.operators if len(op.inputs) > 2 and int(op.inputs[0]) == pixels[-1]
                 and op_name(model, op) == "CONV_2D"), None)
    if conv is None or not fill or int(conv.inputs[2]) < 0:
        return None
    w_t, b_t = graph.tensors[int(conv.inputs[1])], graph.tensors[int(conv.inputs[2])]
    w, b = _floats(model, w_t), _floats(model, b_t)
    if w is None or b is None or w.ndim != 4 or w.shape[-1] != len(fill):
        return None
    w64 = w.astype(np.float64)  # OHWI
    scale = np.maximum(np.abs(w64).max(axis=(1, 2, 3), keepdims=True), 1e-30) / 127
    delta = ((np.clip(np.round(w64 / scale), -127, 127) * scale - w64) * np.asarray(fill, np.float64)).sum(axis=(1, 2, 3))
    model.buffers[b_t.buffer].data = np.frombuffer((b - delta).astype(np.float32).tobytes(), np.uint8)
    return tensor_name(graph.tensors[int(conv.outputs[0])]), float(np.abs(delta).max())


def set_pixel_range(calibrated: bytes, fill: list[float] | None = None, pixels_on: bool = True,
                    quantile: tuple[float | None, list] | None = None) -> tuple[bytes, dict]:
    """The calibrated model with min/max 0..255 on its pixel tensors (pixels_on), (given the fold's fill) the stem
    re-centred and (given (P or None, the calibration samples)) every activation's range measured again: min/max, or
    linearquantile:P on the unbounded ones (linear_quantile.set_measured_ranges: TF's records are wrong where a
    kernel ran in place); (model bytes, {"tensors": names set, "stem": conv output, "stem_bias_shift": largest shift,
    "unshifted": the bytes without the stem shift, "linearquantile": tensors given quantile ranges, "minmax_fixed":
    tensors whose recorded min/max was not their own})."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    pixels, names = (pixel_tensors(model) if pixels_on else []), []
    extra: dict = {}
    if quantile is not None:
        from .linear_quantile import set_measured_ranges

        changed = set_measured_ranges(model, calibrated, quantile[1], quantile[0], skip=pixels)
        extra["minmax_fixed"] = changed["minmax"]
        if quantile[0] is not None:
            extra["linearquantile"] = changed["linearquantile"]
    for i in pixels:
        q = graph.tensors[i].quantization
        if q is None or q.min is None or len(q.min) != 1:  # no calibration statistics here: leave it as it is
            continue
        q.min, q.max = np.array([PIXEL_RANGE[0]], np.float32), np.array([PIXEL_RANGE[1]], np.float32)
        names.append(tensor_name(graph.tensors[i]))
    info: dict = {"tensors": names, **extra}
    if fill and pixels:
        info["unshifted"] = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        stem = recentre_stem(model, pixels, fill)
        if stem is not None:
            info["stem"], info["stem_bias_shift"] = stem
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), info


@contextlib.contextmanager
def pixel_grid(enabled: bool = True, fill: list[float] | None = None, record: dict | None = None,
               quantile: float | None = None, measured: bool = True) -> Iterator[None]:
    """While active, every TFLite calibration (onnx2tf's, the debugger's) gives the pixel tensors the range 0..255
    (enabled) and, with the fold's `fill` (mean pixel), re-centres the stem; with `measured` every activation's
    range is measured again on the calibration samples it saw (TF's minmax records are wrong after in-place
    kernels), with `quantile` (P of linearquantile:P) the unbounded ones as mean per-input quantiles.
    `record` gets set_pixel_range's info (last call)."""
    if not enabled and quantile is None and not measured:
        yield
        return
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate

    def calibrate(self, dataset_gen):
        seen: list = []

        def recorded():
            for sample in dataset_gen():
                if quantile is not None or measured:
                    seen.append(sample)
                yield sample

        content, info = set_pixel_range(original(self, recorded), fill, enabled,
                                        (quantile, seen) if quantile is not None or measured else None)
        log.info("TFLite calibration: grey-level tensors %s set to 0..255 (scale 1); stem %s re-centred by up to %s; "
                 "%d tensors on linearquantile ranges, %d recorded min/max replaced by the measured ones",
                 info["tensors"], info.get("stem"), info.get("stem_bias_shift"), len(info.get("linearquantile", [])),
                 len(info.get("minmax_fixed", [])))
        if record is not None:
            record.clear()
            record.update(info)
        return content

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield
    finally:
        calibrator.Calibrator.calibrate = original


def input_grid(model_path) -> list[dict]:
    """The written .tflite's quantization of its grey-level tensors, read back: the image input (integer I/O) or
    the QUANTIZE right after it (float I/O), then the PAD/ADD chain: [{tensor, dtype, scale, zero_point}]."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model_path, threads=1, use_xnnpack=False)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    tensor, rows = int(it.get_input_details()[0]["index"]), []
    while True:
        d = details[tensor]
        if np.dtype(d["dtype"]) in (np.int8, np.uint8):
            scale, zero = d["quantization"]
            rows.append({"tensor": d["name"], "dtype": np.dtype(d["dtype"]).name, "scale": float(scale),
                         "zero_point": int(zero)})
        users = [o for o in ops if tensor in list(o["inputs"])]
        if len(users) != 1 or users[0]["op_name"] not in CHAIN_OPS | {"QUANTIZE"}:
            return rows
        tensor = int(users[0]["outputs"][0])
