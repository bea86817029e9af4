"""Importers: one per source format. PyTorch/ONNX give a float ONNX file; Keras, SavedModel and
.tflite sources give a float32 TFLite reference (they convert to TFLite bundles only)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ImportFailed
from .base import ImportedModel
from .onnx_file import import_onnx
from .torch_module import import_torch


log = logging.getLogger(__name__)
TENSORFLOW_FORMATS = ("keras", "savedmodel", "tflite")  # sources that only the TFLite path takes


def detect_format(source: str) -> str:
    """Which importer handles `source`: onnx | torch-factory | torchscript | exported-program |
    keras | savedmodel | tflite."""
    if ":" in source and source.split(":", 1)[0].endswith(".py"):
        return "torch-factory"
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".torchscript"):
        return "torchscript"
    if suffix == ".pt2":
        return "exported-program"
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    if Path(source).is_dir():
        if (Path(source) / "saved_model.pb").is_file() or (Path(source) / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ImportFailed(f"{source} is a folder without saved_model.pb: give a TensorFlow SavedModel folder")
    raise ImportFailed(
        f"cannot tell the format of {source!r}: give a .onnx file, file.py:factory, a TorchScript .pt, an exported "
        ".pt2, a Keras .keras/.h5 file, a SavedModel folder or a .tflite file"
    )


def import_model(source: str, workdir: Path, input_shape: list[int] | None, opset: int | None = None,
                 data: list[Path] | None = None) -> ImportedModel:
    """Load `source` into `workdir`: a float ONNX file, or a float32 TFLite reference for TF/TFLite sources.
    `data`: the calibration/eval files; a PyTorch model's export example takes its inputs' dtypes (and, for a
    forward with several inputs, their shapes) from the first .npz among them."""
    kind = detect_format(source)
    _warn_unread(kind, input_shape, opset)
    if kind == "onnx":
        return import_onnx(Path(source), workdir, input_shape)
    if kind in ("keras", "savedmodel"):
        from .tensorflow_model import import_tensorflow_model

        return import_tensorflow_model(Path(source), kind, workdir)
    if kind == "tflite":
        from .tflite_file import import_tflite

        return import_tflite(Path(source), workdir)
    return import_torch(source, kind, workdir, input_shape, opset, data)


def _warn_unread(kind: str, input_shape: list[int] | None, opset: int | None) -> None:
    """--opset for a source that is not exported here, or --input-shape for a TensorFlow/TFLite one, did nothing
    without a word (a .tflite taking 1x16x16x3 converted with --input-shape 1x3x8x8 as if it had been read)."""
    source = {"onnx": "an ONNX", "keras": "a Keras", "savedmodel": "a SavedModel", "tflite": "a .tflite"}
    if opset is not None and kind in source:
        log.warning("--opset %s does nothing for %s source: it sets the opset of the PyTorch export; the model keeps "
                    "its own", opset, source[kind])
    if input_shape and kind in TENSORFLOW_FORMATS:
        log.warning("--input-shape does nothing for %s source: its inputs keep the shapes the model has", source[kind])


__all__ = ["TENSORFLOW_FORMATS", "ImportedModel", "detect_format", "import_model"]
