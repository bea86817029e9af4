"""fp16 conversion (ONNX Runtime's float16 tool) that keeps float32 what fp16 cannot hold.

`convert_float_to_float16` clamps a constant beyond fp16's range (|v| > 65504) to 65504 and only logs it: a
model multiplying by 1e5 then 1e-5 came out scaling every answer by 0.655, which a classifier's argmax and a
cosine (scale-blind) both pass. An activation that reaches past the range becomes inf, then NaN, on a device
whose kernels compute in fp16 (a Jetson; ONNX Runtime's CPU kernels widen, so the host may never see it).
So a node reading such a constant stays float32, and so do the nodes that make or read a tensor whose peak on
the sample data comes within half of the range (the tool's node_block_list); the report names them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
log = logging.getLogger(__name__)
HEADROOM = 0.5  # a tensor peaking past half the range on the samples may pass it on inputs they missed
PEAK_SAMPLES = 4  # samples whose every intermediate tensor is kept at once, one at a time


def _out_of_range(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return False
    values = numpy_helper.to_array(tensor)
    return bool(values.size) and bool(np.nanmax(np.abs(values)) > FP16_MAX)


def nodes_with_unrepresentable_constants(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read a float constant (initializer or Constant node) beyond fp16's range."""
    big = {t.name for t in model.graph.initializer if _out_of_range(t)}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and _out_of_range(value):
                big.update(node.output)
    return [n.name for n in model.graph.node if n.op_type != "Constant" and big.intersection(n.input)]


def activation_peaks(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The largest |value| each float32 tensor of the graph reaches over `samples` (one run per sample)."""
    import onnxruntime as ort

    probe = onnx.shape_inference.infer_shapes(model)
    known = {o.name for o in probe.graph.output}
    extra = [v for v in probe.graph.value_info
             if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in known]
    probe.graph.output.extend(extra)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peaks = dict.fromkeys(names, 0.0)
    for feeds in samples:
        for name, value in zip(names, sess.run(names, feeds)):
            v = np.asarray(value)
            if v.dtype.kind == "f" and v.size:
                peaks[name] = max(peaks[name], float(np.nanmax(np.abs(v))))
    return peaks


def nodes_near_overflow(model: onnx.ModelProto, peaks: dict[str, float]) -> list[str]:
    """Nodes making or reading a tensor whose peak comes within HEADROOM of fp16's range."""
    hot = {name for name, peak in peaks.items() if peak > HEADROOM * FP16_MAX}
    return [n.name for n in model.graph.node if hot.intersection(n.output) or hot.intersection(n.input)]


def to_fp16(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]] = ()) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The fp16 model (float32 inputs and outputs) and what the report says about it. `samples` (a few of the
    gate's inputs, one dict of feeds each) find the activations near overflow; without them only constants."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for i, node in enumerate(model.graph.node):  # the block list goes by name: give unnamed nodes one
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    constants = nodes_with_unrepresentable_constants(model)
    hot: list[str] = []
    if samples:
        try:
            hot = nodes_near_overflow(model, activation_peaks(model, list(samples)[:PEAK_SAMPLES]))
        except Exception as exc:  # noqa: BLE001 - a probe that cannot run leaves the constants check; the gate still runs
            log.warning("fp16: activation ranges not checked (%s); the accuracy gate still compares the answers",
                        str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__)
    keep = list(dict.fromkeys(constants + hot))
    out = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)
    drop_cast_round_trips(out)
    info: dict[str, Any] = {"recipe": "fp16", "io": "float32", "tool": "onnxruntime.transformers.float16",
                            "overflow_checked_on": min(len(samples), PEAK_SAMPLES)}
    if keep:
        info["float32_nodes"] = {"nodes": keep, "why": f"they read constants beyond fp16's range (|v| > {FP16_MAX:g})"
                                 f" or make or read tensors past {HEADROOM:g} of it on the samples",
                                 "constants": constants, "activations": hot}
    return out, info


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs; returns how many Casts went. The float16 tool puts one between two nodes it
    keeps float32 (their tensor passes through fp16 anyway: the overflow they were kept for comes back)."""
    g = model.graph
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    outputs = {o.name for o in g.output}
    fp32 = {v.name for v in (*g.input, *g.value_info) if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}

    def cast_to(node: onnx.NodeProto, dtype: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == dtype for a in node.attribute)

    gone: set[int] = set()
    for down in g.node:
        mid = down.output[0] if cast_to(down, onnx.TensorProto.FLOAT16) and down.input[0] in fp32 else None
        ups = users.get(mid, []) if mid else []
        if not ups or mid in outputs or not all(cast_to(u, onnx.TensorProto.FLOAT) for u in ups):
            continue
        for up in ups:  # every reader of the fp32 copy reads the fp32 original instead
            if up.output[0] in outputs:
                up.op_type, up.input[0] = "Identity", down.input[0]
                del up.attribute[:]
                continue
            for reader in users.get(up.output[0], []):
                reader.input[:] = [down.input[0] if i == up.output[0] else i for i in reader.input]
            gone.add(id(up))
        gone.add(id(down))
    kept = [n for n in g.node if id(n) not in gone]
    del g.node[:]
    g.node.extend(kept)
    return len(gone)
