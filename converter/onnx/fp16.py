"""fp16 conversion (ONNX Runtime's float16 tool) that keeps float32 the nodes whose constants fp16 cannot hold.

`convert_float_to_float16` clamps a constant beyond fp16's range (|v| > 65504) to 65504 and only logs it: a
model multiplying by 1e5 then 1e-5 came out scaling every answer by 0.655, which a classifier's argmax and a
cosine (scale-blind) both pass. A node reading such a constant stays float32 (the tool's node_block_list);
what it keeps float is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


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


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The fp16 model (float32 inputs and outputs) and what the report says about it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for i, node in enumerate(model.graph.node):  # the block list goes by name: give unnamed nodes one
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = nodes_with_unrepresentable_constants(model)
    out = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)
    info: dict[str, Any] = {"recipe": "fp16", "io": "float32", "tool": "onnxruntime.transformers.float16"}
    if keep:
        info["float32_nodes"] = {"nodes": keep, "why": f"they read constants beyond fp16's range (|v| > {FP16_MAX:g})"}
    return out, info
