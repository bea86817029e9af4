"""The Runtime interface every inference backend implements, and its typed error."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Manifest
from ..errors import AgentError


class RuntimeLoadError(AgentError, RuntimeError):
    """The model could not be loaded or run by the runtime (one line, with the cause)."""

    code_name = "runtime"


@dataclass
class RuntimeInfo:
    """What actually ran: reported by `bench`, the health check and telemetry."""

    runtime: str
    version: str
    provider: str  # execution provider / delegate that runs the model
    threads: int
    details: dict[str, Any] = field(default_factory=dict)


class ModelSession(ABC):
    """A loaded model. `run` takes feeds in the bundle's own layout and dtype."""

    manifest: Manifest
    info: RuntimeInfo

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference; outputs in manifest order, dequantized to float when integer."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources (optional)."""


class Runtime(ABC):
    """A backend: turns an unpacked bundle into a ModelSession."""

    name: str

    @abstractmethod
    def load(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> ModelSession:
        """Load the bundle's model file from `bundle_dir`."""


def to_integer(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values for a plain integer input (no quantization parameters), rounded and clipped to its range:
    grey levels 0..255 for uint8 pixels, token ids; both runtimes feed such inputs this way."""
    if array.dtype == dtype:
        return array
    if array.dtype.kind == "f":
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    return array.astype(dtype)
