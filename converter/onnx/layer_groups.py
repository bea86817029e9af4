"""What "keep this layer in float" means for an ONNX QDQ graph: the weighted node with the activation after it.

Keeping a Conv alone in float (nodes_to_exclude) leaves its activation quantized: a SiLU exported as
Sigmoid + Mul (YOLOv5/v8/v11, EfficientNet) or a Relu/Clip/HardSwish then quantizes the Conv's output on the
way in, so only the weights' rounding goes and the activation rounding the search meant to remove stays
(issue 14: int8 YOLOv8n loses near-threshold boxes to activation noise in the early high-resolution layers).
A layer group is the weighted node plus the activation nodes that read only its output, so the search's
unit matches a framework's "Conv + act" layer.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# One-input activations that follow a layer (a single consumer, applied elementwise).
UNARY_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "PRelu"}
GATES = {"Sigmoid", "HardSigmoid"}  # x * gate(x): SiLU/Swish (Sigmoid) and hard-swish (HardSigmoid) as two nodes


def _gated(t: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto] | None:
    """[gate, Mul] when tensor `t` feeds exactly x * gate(x) and nothing else."""
    nodes = consumers.get(t, [])
    gates = [n for n in nodes if n.op_type in GATES]
    muls = [n for n in nodes if n.op_type == "Mul"]
    if len(nodes) != 2 or len(gates) != 1 or len(muls) != 1:
        return None
    if set(muls[0].input) != {t, gates[0].output[0]} or len(consumers.get(gates[0].output[0], [])) != 1:
        return None
    return [gates[0], muls[0]]


def layer_groups(model_path: Path, layers: list[str]) -> dict[str, list[str]]:
    """layer (weighted node name) -> [that node, its activation nodes...] in graph order."""
    model = onnx.load(str(model_path), load_external_data=False)
    nodes = {n.name: n for n in model.graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    groups: dict[str, list[str]] = {}
    for name in layers:
        node = nodes.get(name)
        group = [name]
        t = node.output[0] if node is not None and node.output else None
        while t is not None:
            nxt = consumers.get(t, [])
            gated = _gated(t, consumers)
            if gated:
                group += [n.name for n in gated]
                t = gated[1].output[0]
            elif len(nxt) == 1 and nxt[0].op_type in UNARY_ACTIVATIONS:
                group.append(nxt[0].name)
                t = nxt[0].output[0]
            else:
                t = None
        groups[name] = group
    return groups

