"""Calibration and eval data: an .npz named after the model's inputs (eval adds `labels`), or a
folder of images preprocessed exactly as the bundle will preprocess them on the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.pipeline.inputs import IMAGE_SUFFIXES
from edge_agent.pipeline.preprocess import preprocess_image, read_image

from .errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Samples for every model input (first axis = sample), optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Feeds for sample i, each with a batch axis of 1."""
        return {k: v[i : i + 1] for k, v in self.inputs.items()}

    def head(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[:n], self.origin)

    def take(self, index: np.ndarray | slice) -> "Dataset":
        """The samples at `index` (an index array or slice along the sample axis)."""
        return Dataset({k: v[index] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[index],
                       self.origin)

    def interleaved_halves(self) -> tuple["Dataset", "Dataset"]:
        """Even- and odd-numbered samples: two halves that both span an ordered file (video, sorted folder)."""
        return self.take(slice(0, None, 2)), self.take(slice(1, None, 2))


def load_dataset(
    source: Path, inputs: list[TensorSpec], preprocess: Preprocess | None, labels: list[str] | None = None,
    max_frames: int = 256,
) -> Dataset:
    """Load an .npz file, an image folder or a video file (max_frames sampled evenly) for these inputs."""
    from .video import is_video, load_video

    source = Path(source)
    if source.is_dir():
        return _load_image_folder(source, inputs, preprocess, labels)
    if source.suffix.lower() == ".npz" and source.is_file():
        return _load_npz(source, inputs)
    if is_video(source) and source.is_file():
        return Dataset({inputs[0].name: load_video(source, inputs, preprocess, max_frames)}, None, origin=str(source))
    raise DataError(f"{source}: data must be an .npz file, a folder of images or a video file")


def _fit_sample_shape(name: str, array: np.ndarray, spec: TensorSpec, origin: str) -> np.ndarray:
    """Arrays are (N, *input shape without batch); accept (N, *shape) with a leading batch of 1 too."""
    want = spec.shape[1:]
    if array.ndim == len(spec.shape) + 1 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != len(spec.shape):
        raise DataError(f"{origin}: array {name!r} has shape {array.shape}; expected (N, {', '.join(map(str, want))})")
    for got, w in zip(array.shape[1:], want):
        if isinstance(w, int) and w > 0 and got != w:
            raise DataError(f"{origin}: array {name!r} has shape {array.shape}; expected (N, {', '.join(map(str, want))})")
    return np.ascontiguousarray(array.astype(np.float32))


def _load_npz(path: Path, inputs: list[TensorSpec]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from exc
    labels = arrays.pop("labels", None)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in arrays:
            feeds[spec.name] = arrays[spec.name]
        elif len(inputs) == 1 and len(arrays) == 1:
            only = next(iter(arrays))
            log.warning("%s: using array %r for model input %r", path.name, only, spec.name)
            feeds[spec.name] = arrays[only]
        else:
            raise DataError(
                f"{path} has no array named {spec.name!r} (model inputs: {', '.join(s.name for s in inputs)}; "
                f"arrays: {', '.join(arrays) or 'none'})"
            )
        feeds[spec.name] = _fit_sample_shape(spec.name, feeds[spec.name], spec, path.name)
    counts = {len(v) for v in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError(f"{path}: inputs must hold the same, non-zero number of samples")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(labels) != counts.pop():
            raise DataError(f"{path}: 'labels' has {len(labels)} entries but the inputs have {len(next(iter(feeds.values())))}")
    return Dataset(feeds, labels, origin=str(path))


def _load_image_folder(folder: Path, inputs: list[TensorSpec], preprocess: Preprocess | None, labels: list[str] | None) -> Dataset:
    if preprocess is None or preprocess.kind != "image":
        raise DataError(f"{folder}: image folders need image preprocessing options (--mean/--std/--color ...)")
    if len(inputs) != 1:
        raise DataError(f"{folder}: image folders only work for single-input models")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    items: list[tuple[Path, int | None]] = []
    if subdirs:  # class folders: named by label name or class index
        for d in subdirs:
            if labels and d.name in labels:
                cls = labels.index(d.name)
            elif d.name.isdigit():
                cls = int(d.name)
            else:
                raise DataError(f"{folder}: class folder {d.name!r} is neither a label name nor a class index")
            items += [(f, cls) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        items = [(f, None) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    tensors = []
    for f, _ in items:
        try:
            tensor, _ = preprocess_image(read_image(str(f)), preprocess, inputs[0])
        except Exception as exc:
            raise DataError(f"{f}: cannot read or preprocess image: {exc}") from exc
        tensors.append(tensor[0])
    y = np.array([c for _, c in items], dtype=np.int64) if subdirs else None
    return Dataset({inputs[0].name: np.stack(tensors).astype(np.float32)}, y, origin=str(folder))


def warn_if_degenerate(data: Dataset, what: str) -> list[str]:
    """Log (and return) a warning for each input whose samples are all the same: such data
    cannot calibrate int8 ranges or measure accuracy."""
    warnings = []
    for name, arr in data.inputs.items():
        if len(arr) > 1 and float(np.ptp(arr, axis=0).max()) < 1e-6:
            warnings.append(f"{what} data for input {name!r} is the same in all {len(arr)} samples: "
                            "give representative inputs")
            log.warning(warnings[-1])
    return warnings
