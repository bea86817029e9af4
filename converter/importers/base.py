"""What every importer returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ImportedModel:
    onnx_path: Path  # one self-contained float ONNX file
    source_format: str
    source_sha256: str
    opset: int
    details: dict[str, Any] = field(default_factory=dict)
