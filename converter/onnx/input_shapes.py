"""Pin symbolic (dynamic) input dimensions of an ONNX model to fixed sizes.

Real exported models (e.g. PP-OCR) declare inputs like [-1, 3, '?', '?']. Calibration, ORT's
quant_pre_process (symbolic shape inference) and image preprocessing all need fixed sizes, so
`--input-shape 1x3x48x192` rewrites the graph input shapes, drops stale intermediate shapes and
re-runs ONNX shape inference.
"""

from __future__ import annotations

import logging

import onnx

from ..errors import ImportFailed

log = logging.getLogger(__name__)


def dynamic_inputs(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Graph inputs (not initializers) that have a symbolic, unknown or negative dimension."""
    inits = {i.name for i in model.graph.initializer}
    found: dict[str, list[int | str]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            found[vi.name] = dims
    return found


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | list[int]) -> onnx.ModelProto:
    """Set graph input shapes (a list applies to the only/first input); fixed dims must match.

    Raises ImportFailed when the rank or a fixed dimension contradicts the model.
    """
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if isinstance(shapes, list):
        if len(inputs) != 1:
            names = [vi.name for vi in inputs]
            raise ImportFailed(f"--input-shape gives one shape but the model has {len(inputs)} inputs "
                               f"({', '.join(names)}): give one per input, --input-shape {names[0]}=SHAPE repeated")
        shapes = {inputs[0].name: shapes}
    by_name = {vi.name: vi for vi in inputs}
    for name, shape in shapes.items():
        if name not in by_name:
            raise ImportFailed(f"model has no input named {name!r} (inputs: {', '.join(by_name)})")
        dims = by_name[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ImportFailed(f"--input-shape {'x'.join(map(str, shape))} has rank {len(shape)}; input {name!r} has rank {len(dims)}")
        for axis, (d, want) in enumerate(zip(dims, shape)):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != want:
                raise ImportFailed(f"--input-shape sets axis {axis} of {name!r} to {want}, but the model fixes it at {d.dim_value}")
        for d, want in zip(dims, shape):
            d.Clear()
            d.dim_value = int(want)
    # Intermediate and output shapes were inferred for the dynamic graph: recompute them.
    del model.graph.value_info[:]
    saved = {o.name: [d for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # the pinned model still runs; only static shapes are missing
        log.warning("shape inference after pinning input shapes failed: %s", str(exc).splitlines()[0])
    for out in model.graph.output:  # keep the declared (symbolic) output shape where inference found none
        if not out.type.tensor_type.HasField("shape") and saved.get(out.name):
            dims = out.type.tensor_type.shape.dim
            for d in saved[out.name]:
                new = dims.add()
                if d.HasField("dim_value") and d.dim_value > 0:
                    new.dim_value = d.dim_value
                else:
                    new.dim_param = d.dim_param or "?"
    return model


def name_negative_dims(model: onnx.ModelProto) -> int:
    """Turn -1/0 input and output dims (exporters' "dynamic", e.g. Paddle's -1 batch) into named dims,
    as the manifest and ORT expect."""
    inits = {i.name for i in model.graph.initializer}
    changed = 0
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in inits:
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = "N" if axis == 0 else f"{vi.name}_dim{axis}"
                changed += 1
    return changed
