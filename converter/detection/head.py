"""The decode head of a detector: the nodes int8 must leave in float.

A detector's last convolutions give per-scale maps (rank 4); the head then flattens them (Reshape to
rank 3), concatenates box coordinates in pixels (0-640) with class probabilities (0-1), applies
sigmoid/softmax and the box decode (DFL, anchors, strides). Quantizing that part with one scale per
tensor rounds the probabilities to zero or caps them (issue 14: int8 scores stuck at 0.50, TFLite int8
with no boxes at all). Everything downstream of the first rank-4 -> rank <= 3 reshape stays float;
the convolutions before it stay int8, except the last ones that give the logits.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Callable

FLATTENING_OPS = {"Reshape", "Flatten", "Squeeze"}
TFLITE_FLATTENING_OPS = {"RESHAPE", "SQUEEZE"}
# Ops that only move values (NCHW -> NHWC before the flattening: PyTorch's `permute(0, 2, 3, 1).reshape(...)` and
# tf2onnx's SSD/BlazeFace heads): the head's logit convolutions sit behind them.
LAYOUT_OPS = {"Transpose", "Identity"}
TFLITE_LAYOUT_OPS = {"TRANSPOSE"}


def _rank_of(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    for init in model.graph.initializer:
        ranks[init.name] = len(init.dims)
    return ranks


def downstream(start: list[str], consumers: dict[str, list[tuple[str, list[str]]]]) -> set[str]:
    """Names of the nodes reachable from the tensors in `start` (consumers: tensor -> [(node, outputs)])."""
    seen: set[str] = set()
    todo = deque(start)
    while todo:
        for node, outs in consumers.get(todo.popleft(), []):
            if node not in seen:
                seen.add(node)
                todo.extend(outs)
    return seen


def onnx_head_nodes(model_path: Path) -> list[str]:
    """Names of the ONNX nodes that form the decode head (graph order); empty when no flattening is found."""
    import onnx

    model = onnx.load(str(model_path))
    ranks = _rank_of(model)
    consumers: dict[str, list[tuple[str, list[str]]]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append((n.name, list(n.output)))
    starts = [n for n in model.graph.node if n.op_type in FLATTENING_OPS and n.input
              and ranks.get(n.input[0]) == 4 and 0 < ranks.get(n.output[0], 0) <= 3]
    producer = {o: n for n in model.graph.node for o in n.output}
    feeding = [n for s in starts for n in logit_layers(
        s.input[0], producer, lambda n: n.op_type, lambda n: list(n.input), LAYOUT_OPS, "Concat", "Conv")]
    head = {n.name for n in [*starts, *feeding]} | downstream([o for n in starts for o in n.output], consumers)
    return [n.name for n in model.graph.node if n.name in head]


def logit_layers(tensor: Any, producer: dict[Any, Any], op_type: Callable[[Any], str], inputs: Callable[[Any], list],
                 layout_ops: set[str], concat: str, conv: str) -> list[Any]:
    """The nodes that feed a flattening's input `tensor` and stay float with the head (ONNX nodes or TFLite ops):
    the layout ops in between (Transpose), the per-scale Concat of box and class maps (YOLOv8: 64 DFL logits + C
    class logits; each branch's last Conv then keeps its own int8 scale instead of sharing one), and the
    convolutions that give the class (and box) logits, whether they feed that Concat or the flattening itself
    (SSD, BlazeFace: one Conv per scale, then permute + reshape). Calibration frames with no confident object give
    a logit range below 0, and int8 then clips every logit to at most 0, i.e. every score to at most
    sigmoid(0) = 0.50 (issue 14: a face at 0.83 came out 0.50). They are 1x1/3x3 convs of a few channels: cheap."""
    chain: list[Any] = []
    node = producer.get(tensor)
    while node is not None and op_type(node) in layout_ops:
        chain.append(node)
        node = producer.get(inputs(node)[0]) if inputs(node) else None
    if node is None:
        return chain
    if op_type(node) == conv:
        return [*chain, node]
    if op_type(node) != concat:
        return chain
    convs = [producer[i] for i in inputs(node) if i in producer and op_type(producer[i]) == conv]
    return [*chain, node, *convs]


def tflite_head_tensors(model_path: Path) -> list[str]:
    """Output tensor names of the TFLite ops that form the decode head (same rule as onnx_head_nodes)."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model_path, threads=1, use_xnnpack=False)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    consumers: dict[int, list[tuple[int, list[int]]]] = {}
    for op in ops:
        for t in op["inputs"]:
            consumers.setdefault(int(t), []).append((op["index"], [int(o) for o in op["outputs"]]))
    rank = lambda i: len(tensors[i]["shape"]) if i in tensors else 0  # noqa: E731
    starts = [op for op in ops if op["op_name"] in TFLITE_FLATTENING_OPS and len(op["inputs"])
              and rank(int(op["inputs"][0])) == 4 and 0 < rank(int(op["outputs"][0])) <= 3]
    producer = {int(o): op for op in ops for o in op["outputs"]}
    feeding = [op for s in starts for op in logit_layers(
        int(s["inputs"][0]), producer, lambda op: op["op_name"], lambda op: [int(i) for i in op["inputs"]],
        TFLITE_LAYOUT_OPS, "CONCATENATION", "CONV_2D")]
    head = ({op["index"] for op in [*starts, *feeding]}
            | downstream([int(o) for op in starts for o in op["outputs"]], consumers))
    # An int8 build names a head op's graph output after the DEQUANTIZE that follows it (the op's own output gets a
    # suffix: `PartitionedCall:11`), and the quantization debugger knows the layer by that float name: keep both.
    return [tensors[int(o)]["name"] for op in ops if op["index"] in head for o in op["outputs"]
            if op["op_name"] != "QUANTIZE"]
