"""Cheap per-layer sensitivity pre-ranking for ONNX QDQ models: run the float and the int8 model once
with every quantizable node's input and output exposed, and measure how much error each layer *adds*
(noise-to-signal ratio of its output minus that of its input, both vs the float model).

One pass over a few samples instead of one re-quantization + evaluation per layer, so models with
60+ convolutions (text detectors, recognisers) get a ranking in seconds; only the top few are then
measured by exclusion (converter.accuracy.mixed_precision.rank_by_exclusion).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..data import Dataset
from .model_io import ort_session

log = logging.getLogger(__name__)


def _expose(model_path: Path, tensors: list[str], out: Path) -> Path:
    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            have.add(name)
    onnx.save_model(model, str(out), save_as_external_data=False)
    return out


def _run(model: Path, data: Dataset, names: list[str], exact_int8: bool = False) -> dict[str, list[np.ndarray]]:
    sess = ort_session(model, exact_int8=exact_int8)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(data)):
        for n, v in zip(names, sess.run(names, data.sample(i))):
            got[n].append(np.asarray(v, dtype=np.float64).ravel())
    return got


def _nsr(ref: list[np.ndarray], cand: list[np.ndarray]) -> float:
    r, c = np.concatenate(ref), np.concatenate(cand)
    return float(((r - c) ** 2).mean() / max(float(r.var()), 1e-12))


def local_errors(float_model: Path, qdq_model: Path, data: Dataset, layers: list[str], workdir: Path,
                 groups: dict[str, list[str]] | None = None, exact_int8: bool = False) -> list[dict]:
    """Per layer (node name in the float graph): the output error it adds when quantized, largest first.
    exact_int8: run the QDQ model as written (converter.onnx.int8_arithmetic), not in saturating kernels.

    groups: layer -> its nodes (converter.onnx.layer_groups): the error is measured at the group's output
    (after the activation), where keeping the group in float removes it.

    Tensor names of the float graph survive in ORT's QDQ graph (quantized tensors gain
    `_QuantizeLinear_Output` / `_DequantizeLinear_Output` copies), so the same names are compared.
    """
    model = onnx.load(str(float_model), load_external_data=False)
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    qdq = onnx.load(str(qdq_model), load_external_data=False)
    present = {t for n in qdq.graph.node for t in (*n.input, *n.output)} | {i.name for i in qdq.graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def visible(t: str) -> str | None:
        # ORT folds a Relu/Clip that follows a quantized node into its output range: compare after it.
        while t not in present:
            nxt = consumers.get(t, [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Relu", "Clip", "LeakyRelu"):
                return None
            t = nxt[0].output[0]
        return t

    io: dict[str, tuple[str, str]] = {}
    for name in layers:
        node = nodes.get(name)
        if node is None or not node.input or node.input[0] in inits:
            continue
        last = nodes.get((groups or {}).get(name, [name])[-1], node)
        tin, tout = visible(node.input[0]), visible(last.output[0])
        if tin and tout:
            io[name] = (tin, tout)
    graph_inputs = {i.name for i in model.graph.input}
    tensors = sorted({t for pair in io.values() for t in pair if t not in graph_inputs})
    fexp = _expose(float_model, tensors, workdir / "float.expose.onnx")
    qexp = _expose(qdq_model, tensors, workdir / "int8.expose.onnx")
    ref, cand = _run(fexp, data, tensors), _run(qexp, data, tensors, exact_int8)
    rows = []
    for name, (tin, tout) in io.items():
        e_out = _nsr(ref[tout], cand[tout])
        e_in = 0.0 if tin in graph_inputs else _nsr(ref[tin], cand[tin])
        rows.append({"layer": name, "output_error": round(e_out, 8), "input_error": round(e_in, 8),
                     "added_error": round(e_out - e_in, 8)})
    rows.sort(key=lambda r: r["added_error"], reverse=True)
    return rows
