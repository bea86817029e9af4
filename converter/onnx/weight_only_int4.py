"""Weight-only 4-bit quantization for MatMul-heavy ONNX models (ONNX Runtime's MatMulNBits).

Each MatMul whose right-hand side is a constant 2-D weight [K, N] becomes one com.microsoft
MatMulNBits node: the weight is stored as 4-bit integers in blocks of BLOCK_SIZE along K, one
float scale per block and column (symmetric: no zero points). Activations stay float; Conv,
attention score MatMuls (two dynamic inputs) and everything else stay as they are.

ONNX Runtime's quantizer only rewrites MatMul, while torch exports nn.Linear on 2-D inputs as
Gemm (transB=1), so constant-weight Gemm nodes are first rewritten, exactly, as MatMul (+ Add).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import NothingToQuantize
from .model_io import node_attr

log = logging.getLogger(__name__)

# Defaults, and why (measured with scripts/bench_int4.py on this 2-core x86 box, ORT 1.32.0):
# - BLOCK_SIZE 32: the smallest block MLAS has fast kernels for; one scale per 32 weights keeps the
#   rounding error low (top-1 agreement with float ~99-100 % on the test MLP) at ~4.5-5 bits per weight.
# - symmetric: no zero-point tensor (smaller file), and the int8-compute kernels are fastest with it.
# - ACCURACY_LEVEL 4: activations are quantized to int8 on the fly and the block dot products run in
#   int8 (AVX2/AVX512-VNNI on x86, dot-product/i8mm on ARMv8.2+ like the Pi 5); level 0 dequantizes
#   to fp32 and was measured slower at batch 1 (see docs/int4.md for the figures).
BLOCK_SIZE = 32
SYMMETRIC = True
ACCURACY_LEVEL = 4
BITS = 4


@dataclass
class WeightOnlyResult:
    """What quantize_weight_only did, for the conversion report."""

    gemm_rewritten: int
    quantized_nodes: list[str]
    quantized_params: int
    float_params_left: int
    block_size: int
    symmetric: bool
    accuracy_level: int

    def to_dict(self) -> dict[str, Any]:
        total = self.quantized_params + self.float_params_left
        return {
            "bits": BITS, "block_size": self.block_size, "symmetric": self.symmetric,
            "accuracy_level": self.accuracy_level, "gemm_rewritten_as_matmul": self.gemm_rewritten,
            "quantized_matmuls": len(self.quantized_nodes), "quantized_weight_params": self.quantized_params,
            "float_weight_params": self.float_params_left,
            "quantized_weight_share": round(self.quantized_params / total, 4) if total else 0.0,
            "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
        }



def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (nodes_to_exclude and the report go by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move `Constant` nodes holding a tensor (`value`) into initializers, in place; returns the count.

    Exporters such as paddle2onnx store weights as Constant nodes; the quantizer only sees initializers.
    (The converter's clean-up pass usually does this already; this keeps the function self-sufficient.)
    """
    keep, moved = [], 0
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        model.graph.ClearField("node")
        model.graph.node.extend(keep)
    return moved


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm(A, W[, C]) with a constant 2-D W and transA=0 as MatMul(A, W') (+ Add C'), in place.

    W' = alpha * (W^T if transB else W), C' = beta * C: the same result in float. Returns the count.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if w is None or node_attr(node, "transA", 0) or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(w)
        weight = (weight.T if node_attr(node, "transB", 0) else weight) * np.float32(node_attr(node, "alpha", 1.0))
        base = node.name or node.output[0]
        w_name = f"{base}.weight_kn"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), w_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{node.output[0]}.matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{base}.matmul"))
        if has_bias:
            bias = node.input[2]
            beta = float(node_attr(node, "beta", 1.0))
            if beta != 1.0:
                if bias not in inits:  # a dynamic bias scaled by beta: rare; keep the Gemm as it is
                    new_nodes[-1] = node
                    graph.initializer.pop()
                    continue
                bias_name = f"{base}.bias_scaled"
                graph.initializer.append(numpy_helper.from_array(
                    (numpy_helper.to_array(inits[bias]) * np.float32(beta)).astype(np.float32), bias_name))
                bias = bias_name
            new_nodes.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{base}.bias"))
        rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [i for i in graph.initializer if i.name in used]
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
    return rewritten


def weight_params(model: onnx.ModelProto) -> int:
    """Float parameters in the model's initializers with at least 2 dims (weights, not biases)."""
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer
               if len(i.dims) >= 2 and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def quantizable_matmuls(model: onnx.ModelProto, block_size: int = BLOCK_SIZE) -> dict[str, tuple[int, int]]:
    """MatMul nodes with a constant float weight [K, N] (leading 1-dims allowed) and K >= block_size."""
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or w.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or len(w.dims) < 2:
            continue
        if any(d != 1 for d in w.dims[:-2]):
            continue
        k, n = int(w.dims[-2]), int(w.dims[-1])
        if k >= block_size:  # smaller K would be padded to a whole block: no saving, only rounding error
            out[node.name] = (k, n)
    return out


def quantize_weight_only(src: Path, dst: Path, block_size: int = BLOCK_SIZE, symmetric: bool = SYMMETRIC,
                         accuracy_level: int = ACCURACY_LEVEL) -> WeightOnlyResult:
    """Write `dst`: `src` with every large constant-weight MatMul/Gemm as a 4-bit MatMulNBits node.

    Raises NothingToQuantize when no MatMul/Gemm weight qualifies (e.g. a Conv-only model).
    """
    from onnxruntime.quantization.quant_utils import QuantFormat

    nbits = _import_nbits_quantizer()
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = nbits.DefaultWeightOnlyQuantConfig, nbits.MatMulNBitsQuantizer
    model = onnx.load(str(src))
    constants_to_initializers(model)
    total_before = weight_params(model)
    name_nodes(model)
    rewritten = gemm_to_matmul(model)
    targets = quantizable_matmuls(model, block_size)
    if not targets:
        raise NothingToQuantize(
            f"int4-weight found no MatMul/Gemm with a constant weight of at least {block_size} input features to "
            "quantize (it compresses fully-connected/projection weights only; Conv stays float): "
            "choose --precision int8-static|int8-dynamic|fp16 for this model")
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in targets]
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
                                          quant_format=QuantFormat.QOperator, bits=BITS)
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logger("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    out = quantizer.model.model
    done = [n.name for n in out.graph.node if n.op_type == "MatMulNBits"]
    onnx.checker.check_model(out)
    onnx.save_model(out, str(dst), save_as_external_data=False)
    quantized = sum(k * n for k, n in targets.values())
    log.info("int4-weight: %d MatMul weights (%d params) in 4 bits, %d Gemm rewritten", len(done), quantized, rewritten)
    return WeightOnlyResult(rewritten, done, quantized, max(0, total_before - quantized), block_size, symmetric,
                            accuracy_level)


def _import_nbits_quantizer():
    """Import ORT's matmul_nbits_quantizer, undoing the logging.basicConfig(level=INFO) it runs on import."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return matmul_nbits_quantizer


@contextlib.contextmanager
def _quiet_logger(name: str):
    """ORT's quantizer logs every node at INFO level; keep conversions (and --json output) quiet."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
