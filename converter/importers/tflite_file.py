"""Existing .tflite files: re-packaged and benchmarked as they are, never re-quantized."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..errors import ImportFailed
from .base import ImportedModel


def import_tflite(path: Path, workdir: Path) -> ImportedModel:
    """Check the file loads in the TFLite interpreter and copy it into the work folder."""
    from edge_agent.runtimes.base import RuntimeLoadError
    from edge_agent.runtimes.litert_runtime import open_interpreter

    if not path.is_file():
        raise ImportFailed(f"TFLite file {path} does not exist")
    out = workdir / "source.tflite"
    shutil.copyfile(path, out)
    try:
        open_interpreter(out, threads=1, use_xnnpack=False)
    except RuntimeLoadError as exc:
        raise ImportFailed(f"{path} is not a loadable TFLite model: {exc}") from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImportedModel(onnx_path=None, source_format="tflite", source_sha256=digest, opset=0, tflite_path=out)
