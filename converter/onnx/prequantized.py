"""Already-quantized ONNX models (QAT exports, other tools' QDQ output): detect them, and build their float twin.

The converter must not quantize such a model again (that would replace its trained scales with calibrated
ones and stack a second rounding); it keeps the model's own QuantizeLinear/DequantizeLinear. Its float
twin - the same graph with the int8 weights dequantized and every activation Q/DQ pair replaced by the Clip
to its range (no rounding) - is the reference the accuracy gate and the host benchmark compare it against.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# QOperator-format ops (an already-quantized model without QDQ): also never re-quantized.
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of the quantization ops in the graph (empty for a float model)."""
    counts = Counter(n.op_type for n in model.graph.node)
    return {op: counts[op] for op in (*QDQ_OPS, *QOPERATOR_OPS) if counts.get(op)}


def is_prequantized(model: onnx.ModelProto) -> bool:
    """Whether the model already carries quantization (QDQ pairs or QOperator ops)."""
    return bool(quantized_ops(model))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:  # topological order: Constant, and Identity/Cast/ConstantOfShape of constants
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Constant" and "value" in attrs:
            values[n.output[0]] = numpy_helper.to_array(attrs["value"].t)
        elif n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
        elif n.op_type == "Cast" and n.input[0] in values:
            to = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"].i)
            values[n.output[0]] = values[n.input[0]].astype(to)
        elif n.op_type == "ConstantOfShape" and n.input[0] in values:
            fill = numpy_helper.to_array(attrs["value"].t) if "value" in attrs else np.zeros(1, np.float32)
            values[n.output[0]] = np.full(tuple(int(d) for d in values[n.input[0]]), fill.reshape(-1)[0], dtype=fill.dtype)
    return values


def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    x = x.astype(np.float64)
    zp = np.zeros_like(scale, dtype=np.float64) if zero_point is None else zero_point.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((x - zp) * scale).astype(np.float32)


def float_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without rounding: DequantizeLinear of constants -> float constants, Q->DQ pairs -> Clip.

    Each activation pair becomes Clip(x, (qmin - zp) * scale, (qmax - zp) * scale): a Q's saturation is part
    of a QDQ model's meaning (quantizers fold Relu/Relu6 into it), only its rounding is dropped.
    Raises ValueError for graphs it cannot undo (QOperator ops, a QuantizeLinear feeding anything but
    DequantizeLinear, non-constant scales, blocked quantization).
    """
    if any(n.op_type in QOPERATOR_OPS for n in model.graph.node):
        raise ValueError("QOperator-format graph (QLinearConv/ConvInteger...): no float twin")
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    g = twin.graph
    consts = _constants(twin)
    new_inits: list[onnx.TensorProto] = []
    replace: dict[int, onnx.NodeProto | None] = {}  # node index -> replacement (None: drop)
    producers = {o: i for i, n in enumerate(g.node) for o in n.output}
    for i, n in enumerate(g.node):
        if n.op_type != "DequantizeLinear":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("block_size"):
            raise ValueError(f"blocked DequantizeLinear {n.name!r} is not supported")
        scale = consts.get(n.input[1])
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            raise ValueError(f"DequantizeLinear {n.name!r} has a non-constant scale")
        src = n.input[0]
        if src in consts:  # weights / biases
            new_inits.append(numpy_helper.from_array(_dequantize(consts[src], scale, zp, int(attrs.get("axis", 1))), n.output[0]))
            replace[i] = None
            continue
        # activation: walk back through Casts to the QuantizeLinear
        j = producers.get(src)
        chain = []
        while j is not None and g.node[j].op_type == "Cast":
            chain.append(j)
            j = producers.get(g.node[j].input[0])
        if j is None or g.node[j].op_type != "QuantizeLinear":
            raise ValueError(f"DequantizeLinear {n.name!r} is not fed by a QuantizeLinear")
        if scale.size != 1:
            raise ValueError(f"per-axis activation quantization at {n.name!r} is not supported")
        info = np.iinfo(zp.dtype if zp is not None else np.uint8)
        z = float(zp.reshape(-1)[0]) if zp is not None else 0.0
        sc = float(scale.reshape(-1)[0])
        lo, hi = f"{n.output[0]}_twin_min", f"{n.output[0]}_twin_max"
        new_inits += [numpy_helper.from_array(np.array((info.min - z) * sc, np.float32), lo),
                      numpy_helper.from_array(np.array((info.max - z) * sc, np.float32), hi)]
        replace[i] = onnx.helper.make_node("Clip", [g.node[j].input[0], lo, hi], [n.output[0]], name=f"{n.name}_twin_clip")
        for k in (j, *chain):
            replace.setdefault(k, None)
    for i, n in enumerate(g.node):
        if n.op_type == "QuantizeLinear" and i not in replace:
            raise ValueError(f"QuantizeLinear {n.name!r} feeds something other than DequantizeLinear")
    nodes = [replace.get(i, n) for i, n in enumerate(g.node)]
    del g.node[:]
    g.node.extend(n for n in nodes if n is not None)
    g.initializer.extend(new_inits)
    return _prune(twin)


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove nodes and initializers nothing reaches the outputs through."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(x for x in n.input if x)
    keep.reverse()
    inits = [i for i in g.initializer if i.name in needed]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    return model


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """Report entry for a pre-quantized model: op counts and the weight/activation types it uses."""
    consts = _constants(model)
    weight_types, act_types = Counter(), Counter()
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in consts:
            weight_types[str(consts[n.input[0]].dtype)] += 1
        elif n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in consts:
            act_types[str(consts[n.input[2]].dtype)] += 1
    return {"ops": quantized_ops(model), "constant_types": dict(weight_types), "activation_types": dict(act_types)}
