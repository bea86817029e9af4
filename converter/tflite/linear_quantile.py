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

Every other activation gets its measured min/max from the same run (set_measured_ranges), not TF's record: TF's
calibration logger reads an in-place ADD's input after the sum overwrote it, so each conv feeding a residual ADD was
quantized on the sum's range (EfficientNet-Lite0, GPTQ weights: 0.934 -> 0.953 on the selection half with the
measured ranges, 0.922 -> 0.927 held out).
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


def measure(content: bytes, samples: list[Any], tensors: list[int], pct: float | None = None,
            quantile_tensors: Sequence[int] = ()) -> dict[int, tuple[float, float]]:
    """{tensor: (lower, upper)} of the float model `content` run on each calibration sample (a list of arrays in input
    order, a {name: array} dict or a (signature key, dict) tuple, as TF's calibrator takes), every tensor kept: the
    min / max over the samples, except for `quantile_tensors` (with `pct`): the mean of each sample's
    (100 - pct) / pct % quantiles."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inputs = [d["index"] for d in it.get_input_details()]
    by_quantile = set(quantile_tensors) if pct is not None else set()
    q = (pct or 50.0) / 100.0
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
            if v.size == 0:
                continue
            a, b = np.quantile(v, [1.0 - q, q]) if t in by_quantile else (v.min(), v.max())
            lo[t].append(float(a))
            hi[t].append(float(b))
    return {t: (float(np.mean(lo[t])), float(np.mean(hi[t]))) if t in by_quantile else (min(lo[t]), max(hi[t]))
            for t in tensors if lo[t]}


def calibrated_tensors(model) -> list[int]:
    """Indices (subgraph 0) of the float tensors TF's calibrator gave one min/max (the activations it will quantize)."""
    graph = model.subgraphs[0]
    out = []
    for t, tensor in enumerate(graph.tensors):
        qp = tensor.quantization
        if tensor.type == 0 and qp is not None and qp.min is not None and len(qp.min) == 1:  # TensorType.FLOAT32
            out.append(t)
    return out


def set_measured_ranges(model, content: bytes, samples: list[Any], pct: float | None = None,
                        skip: Sequence[int] = ()) -> dict[str, list[str]]:
    """Set (in place) the calibrated min/max of `model`'s activations to the ranges measured with every tensor kept:
    TF's own records are wrong wherever a kernel ran in place. Its logger reads an ADD's input after the ADD wrote its
    sum into that buffer, so a linear bottleneck's output gets the residual sum's range (EfficientNet-Lite0: [-56, 59]
    recorded for a [-37, 45] tensor; a synthetic conv 13x too wide). minmax = the true min/max over the samples, as
    ONNX Runtime's calibrator measures; with `pct` (linearquantile:P) the unbounded tensors get mean per-input quantiles.
    `content` is the same model's bytes; `skip` tensors keep their ranges. Returns {"minmax": names whose range
    changed, "linearquantile": names set to quantiles}."""
    graph = model.subgraphs[0]
    skipped = {int(i) for i in skip}
    wanted = [t for t in calibrated_tensors(model) if t not in skipped]
    unbounded = set(unbounded_tensors(model, skip)) & set(wanted) if pct is not None else set()
    ranges = measure(content, samples, wanted, pct, sorted(unbounded))
    changed: dict[str, list[str]] = {"minmax": [], "linearquantile": []}
    for t, (a, b) in ranges.items():
        qp = graph.tensors[t].quantization
        lo, hi = np.array([min(a, 0.0)], np.float32), np.array([max(b, 0.0)], np.float32)
        name = tensor_name(graph.tensors[t])
        if t in unbounded:
            changed["linearquantile"].append(name)
        elif not (np.isclose(qp.min[0], lo[0], rtol=1e-4, atol=1e-6) and np.isclose(qp.max[0], hi[0], rtol=1e-4, atol=1e-6)):
            changed["minmax"].append(name)
        qp.min, qp.max = lo, hi
    return changed
