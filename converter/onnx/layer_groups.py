"""What "keep this layer in float" means for an ONNX QDQ graph: the weighted node with the activation after it.

Keeping a Conv alone in float (nodes_to_exclude) leaves its activation quantized: a SiLU exported as
Sigmoid + Mul (YOLOv5/v8/v11, EfficientNet) or a Relu/Clip/HardSwish then quantizes the Conv's output on the
way in, so only the weights' rounding goes and the activation rounding the search meant to remove stays
(issue 14: int8 YOLOv8n loses near-threshold boxes to activation noise in the early high-resolution layers).
A layer group is the weighted node plus the activation nodes that read only its output, so the search's
unit matches a framework's "Conv + act" layer. The same rule serves TFLite (ops named by their output tensor,
as QuantizationDebugger's deny-list names them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# One-input activations that follow a layer (a single consumer, applied elementwise).
UNARY_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "PRelu"}
GATES = {"Sigmoid", "HardSigmoid"}  # x * gate(x): SiLU/Swish (Sigmoid) and hard-swish (HardSigmoid) as two nodes
# TFLite op names in the ONNX vocabulary above.
TFLITE_OPS = {"LOGISTIC": "Sigmoid", "MUL": "Mul", "RELU": "Relu", "RELU6": "Clip", "RELU_N1_TO_1": "Clip",
              "LEAKY_RELU": "LeakyRelu", "HARD_SWISH": "HardSwish", "TANH": "Tanh", "ELU": "Elu", "GELU": "Gelu",
              "PRELU": "PRelu"}


@dataclass
class Node:
    key: str  # how the quantizer names it (ONNX: node name; TFLite: output tensor name)
    op: str  # ONNX op type
    inputs: list[str]
    outputs: list[str]


def _gated(t: str, consumers: dict[str, list[Node]]) -> list[Node] | None:
    """[gate, Mul] when tensor `t` feeds exactly x * gate(x) and nothing else."""
    nodes = consumers.get(t, [])
    gates = [n for n in nodes if n.op in GATES]
    muls = [n for n in nodes if n.op == "Mul"]
    if len(nodes) != 2 or len(gates) != 1 or len(muls) != 1:
        return None
    if set(muls[0].inputs) != {t, gates[0].outputs[0]} or len(consumers.get(gates[0].outputs[0], [])) != 1:
        return None
    return [gates[0], muls[0]]


def group_layers(nodes: list[Node], layers: list[str]) -> dict[str, list[str]]:
    """layer key -> [that layer, its activation nodes...] (keys), following single-consumer activation chains."""
    by_key = {n.key: n for n in nodes}
    consumers: dict[str, list[Node]] = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n)
    groups: dict[str, list[str]] = {}
    for key in layers:
        node = by_key.get(key)
        group = [key]
        t = node.outputs[0] if node is not None and node.outputs else None
        while t is not None:
            nxt = consumers.get(t, [])
            gated = _gated(t, consumers)
            if gated:
                group += [n.key for n in gated]
                t = gated[1].outputs[0]
            elif len(nxt) == 1 and nxt[0].op in UNARY_ACTIVATIONS:
                group.append(nxt[0].key)
                t = nxt[0].outputs[0]
            else:
                t = None
        groups[key] = group
    return groups


def layer_groups(model_path: Path, layers: list[str]) -> dict[str, list[str]]:
    """ONNX: layer (weighted node name) -> [that node, its activation nodes...] in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return group_layers([Node(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node], layers)


def tflite_layer_groups(model_path: Path, layers: list[str]) -> dict[str, list[str]]:
    """TFLite: layer (output tensor name) -> [it, its activation ops' output tensors...]."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(model_path, threads=1, use_xnnpack=False)
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    nodes = [Node(names.get(int(op["outputs"][0]), ""), TFLITE_OPS.get(op["op_name"], op["op_name"]),
                  [names.get(int(i), "") for i in op["inputs"] if int(i) >= 0],
                  [names.get(int(o), "") for o in op["outputs"]])
             for op in it._get_ops_details() if len(op["outputs"])]
    return group_layers(nodes, layers)
