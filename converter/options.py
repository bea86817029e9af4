"""Conversion options: what the user asked for on the command line (or through the API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConvertOptions:
    source: str
    profile: str
    out: Path
    key: Path
    input_shape: list[int] | None = None
    calibration: Path | None = None
    evaluation: Path | None = None
    name: str | None = None
    version: int = 1
    precision: str | None = None  # override the profile's recipe
    calibration_method: str | None = None  # override the profile's method
    io_dtype: str | None = None  # TFLite int8-static model I/O: float32 (default) | int8 | uint8
    calibration_samples: int = 256
    max_accuracy_drop: float | None = None  # percentage points; default: profile
    min_agreement: float | None = None  # default: profile
    min_cosine: float = 0.99  # gate for outputs that are not class scores
    force: bool = False
    bench_runs: int = 50
    bench_warmup: int = 5
    reproducible: bool = False  # leave wall-clock figures out of the manifest
    labels: list[str] | None = None
    color: str = "RGB"
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    scale: float = 1.0 / 255.0
    resize: str = "bilinear"
    layout: str | None = None
    postprocess: str = "classification"
    top_k: int = 5
    opset: int | None = None
    selftest_samples: int = 4
    # accuracy-aware int8 (converter/passes/onnx_mixed_precision.py)
    max_float_layers: int | None = None  # mixed-precision fallback cap; None: a quarter of the layers, at most 8
    sensitivity: str = "auto"  # auto (when int8 misses the budget) | always | off
    sensitivity_samples: int = 64  # eval samples used to rank layers
    quantize_ops: str = "auto"  # all | weighted (Conv/ConvTranspose/MatMul/Gemm only) | auto (measured)
    sensitivity_candidates: int = 16  # layers measured by exclusion (more layers: pre-ranked by activation error)
