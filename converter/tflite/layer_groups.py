"""TFLite reader for the layer-group rule (converter/accuracy/layer_groups.py): ops named by their output tensor,
as QuantizationDebugger's deny-list names them, their op names mapped to the rule's ONNX vocabulary."""

from __future__ import annotations

from pathlib import Path

from ..accuracy.layer_groups import Node, group_layers

# TFLite op names in the rule's (ONNX) vocabulary.
TFLITE_OPS = {"LOGISTIC": "Sigmoid", "MUL": "Mul", "RELU": "Relu", "RELU6": "Clip", "RELU_N1_TO_1": "Clip",
              "LEAKY_RELU": "LeakyRelu", "HARD_SWISH": "HardSwish", "TANH": "Tanh", "ELU": "Elu", "GELU": "Gelu",
              "PRELU": "PRelu"}


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
