"""Importers: one per source format, each returning a float ONNX model file for the passes."""

from __future__ import annotations

from pathlib import Path

from ..errors import ImportFailed
from .base import ImportedModel
from .onnx_file import import_onnx
from .torch_module import import_torch


def detect_format(source: str) -> str:
    """Which importer handles `source`: onnx | torch-factory | torchscript | exported-program."""
    if ":" in source and source.split(":", 1)[0].endswith(".py"):
        return "torch-factory"
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".torchscript"):
        return "torchscript"
    if suffix == ".pt2":
        return "exported-program"
    if suffix in (".tflite", ".keras", ".h5") or Path(source).is_dir():
        raise ImportFailed(f"{source}: this input format needs the TFLite converter path (--format tflite)")
    raise ImportFailed(
        f"cannot tell the format of {source!r}: give a .onnx file, file.py:factory, a TorchScript .pt or an exported .pt2"
    )


def import_model(source: str, workdir: Path, input_shape: list[int] | None, opset: int | None = None) -> ImportedModel:
    """Load `source` and return it as a float ONNX file in `workdir`."""
    kind = detect_format(source)
    if kind == "onnx":
        return import_onnx(Path(source), workdir, input_shape)
    return import_torch(source, kind, workdir, input_shape, opset)


__all__ = ["ImportedModel", "detect_format", "import_model"]
