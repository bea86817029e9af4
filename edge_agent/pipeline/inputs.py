"""Turning user inputs (image files, .npy arrays) into model feeds, as the manifest says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Manifest, TensorSpec
from .preprocess import preprocess_image, read_image, to_layout
from ..errors import AgentError

# Image files, by suffix: what PIL reads (`edge-agent run`, the converter's image folders), and the
# subset OpenCV's imread decodes (camera-pipeline image sources): imread cannot read GIF.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
OPENCV_IMAGE_SUFFIXES = IMAGE_SUFFIXES - {".gif"}
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264", ".ts"})


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


def short_input_name(name: str) -> str:
    """A TFLite input's name as the Keras/SavedModel author wrote it: 'serving_default_feat:0' -> 'feat'."""
    name = name.removeprefix("serving_default_")
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def array_for_input(arrays: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    """The array an .npz holds for input `name`: by its exact name, else by its short (Keras) name."""
    if name in arrays:
        return arrays[name]
    return arrays.get(short_input_name(name))


def load_feed(path: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Feeds for one input file: an image (preprocessed per manifest), a .npy array or an .npz (several inputs)."""
    path = Path(path)
    spec = manifest.inputs[0]
    if path.is_dir():
        raise InputError(f"input {path} is a folder: run every image in it with --source {path}")
    if not path.is_file():
        raise InputError(f"input {path} does not exist")
    if path.suffix.lower() == ".npz":
        return _npz_feeds(path, manifest)
    if path.suffix.lower() == ".npy":
        if len(manifest.inputs) > 1:
            raise InputError(f"{path.name}: the model has {len(manifest.inputs)} inputs "
                             f"({', '.join(t.name for t in manifest.inputs)}): give an .npz with one array per input")
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
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise InputError(f"{path.name} is a video: run it with --source {path}")
    raise InputError(f"{path.name}: unsupported input type (use an image file, a .npy array or an .npz of arrays)")


def _npz_feeds(path: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """One sample for every model input from an .npz whose arrays are named after the inputs (as the converter's
    data files; a single-input model also takes an .npz holding one array of any name)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable .npz file: {exc}") from exc
    if "labels" not in {t.name for t in manifest.inputs}:
        arrays.pop("labels", None)  # the converter's eval files carry their labels: not a model input
    if len(manifest.inputs) == 1 and len(arrays) == 1:
        arrays = {manifest.inputs[0].name: next(iter(arrays.values()))}
    found = {t.name: array_for_input(arrays, t.name) for t in manifest.inputs}
    missing = [name for name, a in found.items() if a is None]
    if missing:
        raise InputError(f"{path.name} has no array named {', '.join(missing)} (model inputs: "
                         f"{', '.join(t.name for t in manifest.inputs)}; arrays: {', '.join(arrays) or 'none'})")
    return {t.name: tensor_to_feed(found[t.name], t) for t in manifest.inputs}


def run_rows(session: Any, feeds: dict[str, np.ndarray], manifest: Manifest) -> list[np.ndarray]:
    """Run a file's samples (first axis, the converter's .npz convention): in one batch when the model takes it,
    else one run per sample with the outputs stacked (a batch of 3 on a batch-1 model was ONNX Runtime's
    'Got invalid dimensions', exit 1)."""
    firsts = {t.shape[0] if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0 else None
              for t in manifest.inputs}
    if firsts != {1} or any(np.ndim(v) == 0 for v in feeds.values()):
        return session.run(feeds)  # a dynamic batch, or inputs whose first axis is not a batch (a state [2, 1, 64])
    counts = {len(v) for v in feeds.values()}
    if len(counts) != 1:
        raise InputError(f"the inputs hold different numbers of samples ({', '.join(map(str, sorted(counts)))})")
    n = counts.pop()
    if n == 1:
        return session.run(feeds)
    runs = [session.run({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
    return [np.concatenate(parts) for parts in zip(*runs)]
