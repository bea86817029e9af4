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
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)
PIXEL_RANGE = (0.0, 255.0)
CHAIN_OPS = {"PAD", "PADV2", "ADD"}  # what fold-input puts between the grey-level input and the first conv


def _op_name(model, op) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


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
        name = _op_name(model, op)
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


def set_pixel_range(calibrated: bytes) -> tuple[bytes, list[str]]:
    """The calibrated model with min/max 0..255 on its pixel tensors; (model bytes, names of the tensors set)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    names = []
    for i in pixel_tensors(model):
        q = graph.tensors[i].quantization
        if q is None or q.min is None or len(q.min) != 1:  # no calibration statistics here: leave it as it is
            continue
        q.min, q.max = np.array([PIXEL_RANGE[0]], np.float32), np.array([PIXEL_RANGE[1]], np.float32)
        name = graph.tensors[i].name
        names.append(name.decode() if isinstance(name, bytes) else str(name))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), names


@contextlib.contextmanager
def pixel_grid(enabled: bool = True, record: list[str] | None = None) -> Iterator[None]:
    """While active, every TFLite calibration (onnx2tf's, the debugger's) gives the pixel tensors the range 0..255.
    `record` collects the names of the tensors set (the report shows them)."""
    if not enabled:
        yield
        return
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate

    def calibrate(self, dataset_gen):
        content, names = set_pixel_range(original(self, dataset_gen))
        log.info("TFLite calibration: grey-level tensors %s set to 0..255 (scale 1)", names)
        if record is not None:
            record.extend(n for n in names if n not in record)
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
