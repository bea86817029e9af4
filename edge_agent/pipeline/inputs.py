"""Turning user inputs (image files, .npy arrays) into model feeds, as the manifest says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import Manifest, TensorSpec
from .preprocess import preprocess_image, read_image, to_layout
from ..errors import AgentError

# Image files, by suffix: what PIL reads (`edge-agent run`, the converter's image folders), and the
# subset OpenCV's imread decodes (camera-pipeline image sources): imread cannot read GIF.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
OPENCV_IMAGE_SUFFIXES = IMAGE_SUFFIXES - {".gif"}


class InputError(AgentError, ValueError):
    """An input file cannot be used with this bundle (one line, says why)."""

    code_name = "bad-input"


def array_to_feed(array: np.ndarray, manifest: Manifest) -> np.ndarray:
    """A .npy array in the SOURCE model's layout -> the bundle's first input's layout, dtype and batch."""
    return tensor_to_feed(array, manifest.inputs[0])


def tensor_to_feed(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An array in the SOURCE model's layout (batch axis optional) -> the input `spec`'s layout and dtype.

    Integer-quantized inputs stay float: the runtime quantizes with the manifest's parameters."""
    want_rank = len(spec.shape)
    if array.ndim == want_rank - 1:
        array = array[None]
    if array.ndim != want_rank:
        raise InputError(f"array has shape {tuple(array.shape)}; the model input '{spec.name}' expects {spec.shape}")
    if spec.source_layout and spec.layout != spec.source_layout:
        array = to_layout(array, spec.source_layout, spec.layout)
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and got != want and not (axis == 0):
            raise InputError(
                f"array has shape {tuple(array.shape)}; the model input '{spec.name}' expects {spec.shape} "
                f"(layout {spec.source_layout or spec.layout})"
            )
    return np.ascontiguousarray(array.astype(np.float32 if spec.dtype in ("int8", "uint8") else spec.dtype, copy=False))


def load_feed(path: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Feeds for one input file: an image (preprocessed per manifest) or a .npy array."""
    path = Path(path)
    spec = manifest.inputs[0]
    if not path.is_file():
        raise InputError(f"input {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path} is not a readable .npy array: {exc}") from exc
        return {spec.name: array_to_feed(array, manifest)}
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if manifest.preprocess is None or manifest.preprocess.kind != "image":
            raise InputError(f"bundle has no image preprocessing; give {spec.name} as a .npy array instead of {path.name}")
        try:
            image = read_image(str(path))
        except Exception as exc:  # Pillow raises several types for bad files
            raise InputError(f"{path} is not a readable image: {exc}") from exc
        tensor, _ = preprocess_image(image, manifest.preprocess, spec)
        return {spec.name: tensor}
    raise InputError(f"{path.name}: unsupported input type (use an image file or a .npy array)")
