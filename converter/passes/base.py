"""The Pass interface and the context a conversion carries from pass to pass."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_profiles import Profile
from edge_agent.bundle import Postprocess, Preprocess, TensorSpec

from ..data import Dataset
from ..importers import ImportedModel
from ..options import ConvertOptions


@dataclass
class ConversionContext:
    """Everything the passes share. Each pass reads what earlier passes left and adds its part."""

    options: ConvertOptions
    profile: Profile
    workdir: Path
    imported: ImportedModel | None = None
    float_model: Path | None = None  # cleaned float ONNX: the accuracy reference
    model: Path | None = None  # the candidate that will be packaged
    reference_model: Path | None = None  # float model in the bundle's format (size/latency reference); default float_model
    format: str = "onnx"
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    preprocess: Preprocess | None = None
    postprocess: Postprocess | None = None
    calibration: Dataset | None = None
    evaluation: Dataset | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)  # archive path -> local file
    report: list[dict[str, Any]] = field(default_factory=list)
    bundle_path: Path | None = None


class Pass(ABC):
    """One step of a conversion: a name, a run() that updates the context, a report entry."""

    name: str = "pass"

    def applies(self, ctx: ConversionContext) -> bool:
        """Whether this pass has anything to do for this conversion."""
        return True

    @abstractmethod
    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        """Do the work; return the report entry (what was done, the numbers)."""
