"""ONNX reader for the layer-group rule (converter/accuracy/layer_groups.py): nodes named as ORT's
`nodes_to_exclude` names them, so a float layer is the weighted node with the activation after it."""

from __future__ import annotations

from pathlib import Path

from ..accuracy.layer_groups import Node, group_layers


def layer_groups(model_path: Path, layers: list[str]) -> dict[str, list[str]]:
    """ONNX: layer (weighted node name) -> [that node, its activation nodes...] in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return group_layers([Node(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node], layers)
