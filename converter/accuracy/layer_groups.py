"""What "keep this layer in float" means, for every runtime: the weighted op with the activation after it.

Keeping a Conv alone in float leaves its activation quantized: a SiLU exported as Sigmoid + Mul (YOLOv5/v8/v11,
EfficientNet) or a Relu/Clip/HardSwish then quantizes the Conv's output on the way in, so only the weights'
rounding goes and the activation rounding the search meant to remove stays (issue 14: int8 YOLOv8n loses
near-threshold boxes to activation noise in the early high-resolution layers). A layer group is the weighted
node plus the activation nodes that read only its output, so the search's unit matches a framework's
"Conv + act" layer. The rule works on a runtime-neutral node list (ops in ONNX vocabulary); the readers turn
a model file into one: converter/onnx/layer_groups.py (ONNX nodes by name) and converter/tflite/layer_groups.py
(TFLite ops by output tensor, as QuantizationDebugger's deny-list names them).
"""

from __future__ import annotations

from dataclasses import dataclass

# One-input activations that follow a layer (a single consumer, applied elementwise).
UNARY_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "PRelu"}
GATES = {"Sigmoid", "HardSigmoid"}  # x * gate(x): SiLU/Swish (Sigmoid) and hard-swish (HardSigmoid) as two nodes


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
