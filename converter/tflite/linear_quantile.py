"""TFLite `--calibration-method linearquantile[:P]`: the ONNX path's ranges (converter/onnx/qdq_quantizer.py) in
TensorFlow's calibrated model.

TensorFlow calibrates min/max only. On the activations no ReLU bounds (a conv/depthwise/fully-connected output
without fused RELU/RELU6 and not read by a RELU op - MobileNetV2's linear bottlenecks - and residual ADD outputs) a
rare outlier input stretches one scale for every input; there the range becomes the mean over the calibration inputs
of each input's (100 - P) / P % quantiles, as on ONNX (MobileNetV2, held-out photos: 0.757 -> 0.830 on ORT). ReLU
outputs keep TF's min/max (their range is their own bound), graph outputs too (the logits' scale). The statistics
are read by running the calibrated float model itself on the calibration inputs with every tensor kept
(tf.lite.Interpreter(experimental_preserve_all_tensors=True)), so tensor indices match whatever made the model
(onnx2tf's converter or the QuantizationDebugger). converter/tflite/pixel_grid.py calls this before TF quantizes.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from .model_io import op_name, tensor_name

log = logging.getLogger(__name__)
LINEAR_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
RELU_OPS = {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"}
NO_ACTIVATION = 0  # tflite ActivationFunctionType.NONE


def _fused_activation(op) -> int:
    return int(getattr(op.builtinOptions, "fusedActivationFunction", NO_ACTIVATION) or NO_ACTIVATION)


def unbounded_tensors(model, skip: Sequence[int] = ()) -> list[int]:
    """Indices (subgraph 0) of the outputs no ReLU bounds: CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED without fused
    activation and not read by a RELU op, and ADD outputs without fused activation; graph outputs and `skip` excluded."""
    graph = model.subgraphs[0]
    readers: dict[int, list[str]] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(op_name(model, op))
    excluded = {int(i) for i in graph.outputs} | {int(i) for i in skip}
    out = []
    for op in graph.operators:
        name, t = op_name(model, op), int(op.outputs[0])
        if t in excluded or _fused_activation(op) != NO_ACTIVATION:
            continue
        if name == "ADD" or (name in LINEAR_OPS and not any(r in RELU_OPS for r in readers.get(t, []))):
            out.append(t)
    return out


def mean_quantiles(content: bytes, samples: list[Any], tensors: list[int], pct: float) -> dict[int, tuple[float, float]]:
    """{tensor: (mean lower, mean upper quantile)} of the float model `content` run on each calibration sample (a
    list of arrays in input order, a {name: array} dict or a (signature key, dict) tuple, as TF's calibrator takes)."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inputs = [d["index"] for d in it.get_input_details()]
    q = pct / 100.0
    lo: dict[int, list[float]] = {t: [] for t in tensors}
    hi: dict[int, list[float]] = {t: [] for t in tensors}
    for sample in samples:
        key, values = (sample[0], sample[1]) if isinstance(sample, tuple) else (None, sample)
        if isinstance(values, dict):
            details = it.get_signature_runner(key).get_input_details()
            feed = [(details[n]["index"], v) for n, v in values.items()]
        else:
            feed = list(zip(inputs, values))
        for index, value in feed:
            value = np.asarray(value)
            if list(it.get_tensor(index).shape) != list(value.shape):
                it.resize_tensor_input(index, list(value.shape))
                it.allocate_tensors()
            it.set_tensor(index, value.astype(it.get_tensor(index).dtype))
        it.invoke()
        for t in tensors:
            v = it.get_tensor(t).ravel()
            a, b = np.quantile(v, [1.0 - q, q])
            lo[t].append(float(a))
            hi[t].append(float(b))
    return {t: (float(np.mean(lo[t])), float(np.mean(hi[t]))) for t in tensors if lo[t]}


def set_linear_quantiles(model, content: bytes, samples: list[Any], pct: float, skip: Sequence[int] = ()) -> list[str]:
    """Set (in place) the calibrated min/max of `model`'s unbounded tensors to their mean per-input quantiles over
    `samples`; `content` is the same model's bytes. Returns the names of the tensors set."""
    graph = model.subgraphs[0]
    wanted = [t for t in unbounded_tensors(model, skip)
              if graph.tensors[t].quantization is not None and graph.tensors[t].quantization.min is not None
              and len(graph.tensors[t].quantization.min) == 1]
    ranges = mean_quantiles(content, samples, wanted, pct)
    names = []
    for t, (a, b) in ranges.items():
        qp = graph.tensors[t].quantization
        qp.min, qp.max = np.array([min(a, 0.0)], np.float32), np.array([max(b, 0.0)], np.float32)
        names.append(tensor_name(graph.tensors[t]))
    return names
