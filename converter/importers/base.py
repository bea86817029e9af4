"""What every importer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ImportedModel:
    """A loaded source model.

    PyTorch and ONNX sources give one self-contained float ONNX file (`onnx_path`). TensorFlow
    sources (Keras, SavedModel) and existing .tflite files give a float32 TFLite file
    (`tflite_path`, the accuracy reference) and, for TensorFlow sources, `tf_source`: what
    tf.lite.TFLiteConverter re-reads for each precision.
    """

    onnx_path: Path | None
    source_format: str
    source_sha256: str
    opset: int
    details: dict[str, Any] = field(default_factory=dict)
    tflite_path: Path | None = None
    tf_source: Path | None = None
