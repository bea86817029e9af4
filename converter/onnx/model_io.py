"""Small ONNX helpers shared by the passes: tensor specs, running a model over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_agent.bundle import TensorSpec

from ..data import Dataset

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


def guess_layout(shape: list[int | str]) -> str:
    if len(shape) == 4:
        if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
            return "NCHW"
        if shape[3] in (1, 3, 4):
            return "NHWC"
        return "NCHW"
    if len(shape) == 2:
        return "NC"
    return "ANY"


def tensor_specs(model_path: Path, layout: str | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX model as manifest TensorSpecs (initializers excluded)."""
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(vi, is_input: bool) -> TensorSpec:
        t = vi.type.tensor_type
        shape: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
        ]
        lay = (layout or guess_layout(shape)) if is_input else ("NC" if len(shape) == 2 else "ANY")
        return TensorSpec(name=vi.name, dtype=_ONNX_DTYPES.get(t.elem_type, "float32"), shape=shape, layout=lay)

    ins = [spec(i, True) for i in model.graph.input if i.name not in inits]
    outs = [spec(o, False) for o in model.graph.output]
    return ins, outs


def ort_session(model_path: Path, threads: int | None = None, exact_int8: bool = False, optimize: bool = True,
                save_optimized: Path | None = None):
    """A CPU session; exact_int8: basic graph optimizations only, so QDQ int8 runs as written instead of in
    fused kernels that saturate on x86 without VNNI (converter.onnx.int8_arithmetic). optimize=False: the graph
    runs as given (one ORT already optimized); save_optimized: write the graph ORT optimized to that file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if exact_int8:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized is not None:
        opts.optimized_model_filepath = str(save_optimized)
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a shape that does not fit the graph shows up here: one line, exit 21
        from ..errors import ImportFailed

        if exc.__class__.__module__.split(".")[0] != "onnxruntime":
            raise
        raise ImportFailed(f"ONNX Runtime cannot load {model_path.name}: {_load_failure(str(exc))}") from exc


def _load_failure(text: str) -> str:
    """What ORT's load error means for the user: every failure got the detector hint about --input-shape, and a
    model stamped with an opset newer than ORT knows was the whole paragraph of ORT's validation message."""
    import re

    newest = re.search(r"support for domain ai\.onnx is till opset (\d+)", text)
    if newest:
        return (f"its opset is newer than this ONNX Runtime supports (up to {newest.group(1)}): export the model with "
                f"opset {newest.group(1)} or older")
    first = (text.strip().splitlines() or ["unknown error"])[0]
    detail = first.split("failed:", 1)[-1].strip()[:240]
    if "is not a registered function/op" in detail:
        return f"{detail}: a custom operator; the device's runtime cannot run it either (replace it with standard ops)"
    return f"{detail} (check --input-shape: detectors usually need sizes divisible by their stride, e.g. 32)"


def run_dataset(model_path: Path, data: Dataset, progress=None, exact_int8: bool = False) -> list[np.ndarray]:
    """Run the model on every sample (batch 1); returns each output stacked over samples."""
    sess = ort_session(model_path, exact_int8=exact_int8)
    names = [o.name for o in sess.get_outputs()]
    input_types = {i.name: i.type for i in sess.get_inputs()}
    collected: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(len(data)):
        feeds = {
            k: (v.astype(np.float16) if input_types.get(k) == "tensor(float16)" else v) for k, v in data.sample(i).items()
        }
        for j, out in enumerate(run_or_explain(sess, names, feeds, model_path)):
            collected[j].append(np.asarray(out, dtype=np.float32))
        if progress:
            progress(1)
    return [np.concatenate(c, axis=0) for c in collected]


def run_or_explain(sess, names: list[str], feeds: dict[str, np.ndarray], model_path: Path) -> list:
    """session.run, with ONNX Runtime's failures as one line and their exit code: inputs that do not fit the
    model's declared inputs are data (22), a model that fails on inputs of its own declared shape is the
    model or its --input-shape (21)."""
    from ..errors import DataError, ImportFailed

    try:
        return sess.run(names, feeds)
    except Exception as exc:
        if exc.__class__.__module__.split(".")[0] != "onnxruntime":
            raise
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:240]
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        if "invalid dimensions for input" in first or "Unexpected input data type" in first or "invalid rank" in first:
            raise DataError(f"the data does not fit {model_path.name}'s inputs ({shapes}): {first}") from exc
        raise ImportFailed(f"{model_path.name} fails on inputs {shapes}: {first} (check --input-shape: "
                           "detectors usually need sizes divisible by their stride, e.g. 32)") from exc


def node_attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of a node's attribute, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
