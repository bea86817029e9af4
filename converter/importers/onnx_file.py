"""ONNX importer: load, check, and re-save as one self-contained file (external data inlined)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import ImportFailed
from .base import ImportedModel

log = logging.getLogger(__name__)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def import_onnx(path: Path, workdir: Path, input_shape: list[int] | dict[str, list[int]] | None = None) -> ImportedModel:
    """Load and check an ONNX file; `input_shape` pins its symbolic input dims (converter.onnx.input_shapes)."""
    from edge_agent.bundle import sha256_file

    if not path.is_file():
        raise ImportFailed(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=True)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ImportFailed(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}") from exc
    from ..onnx.input_shapes import dynamic_inputs, name_negative_dims, pin_input_shapes

    details = {}
    if input_shape:
        details["dynamic_inputs"] = {k: [str(d) for d in v] for k, v in dynamic_inputs(model).items()}
        model = pin_input_shapes(model, input_shape)
        details["pinned_input_shape"] = input_shape
    elif dynamic_inputs(model):
        log.warning("%s has dynamic input dims %s; pin them with --input-shape for calibration, image data "
                    "and full graph optimisation", path.name,
                    "; ".join(f"{k}{v}" for k, v in dynamic_inputs(model).items()))
        name_negative_dims(model)
    out = workdir / "float.onnx"
    if model.ByteSize() > 1_900_000_000:
        raise ImportFailed(f"{path} is over 2 GB; edgekit bundles hold models below the protobuf limit")
    onnx.save_model(model, str(out), save_as_external_data=False)
    return ImportedModel(onnx_path=out, source_format="onnx", source_sha256=sha256_file(path)[1], opset=opset_of(model), details=details)
