"""Calibration/eval data from an .npz file: one array per model input (named after it), optional `labels`."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from edge_agent.bundle import TensorSpec
from edge_agent.pipeline.inputs import array_for_input

from ..errors import DataError
from .dataset import Dataset, feed_dtype

log = logging.getLogger(__name__)
# what np.load raises for a file that is no array file: an empty one (EOFError) or a cut-off zip (BadZipFile) too
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def fit_sample_shape(name: str, array: np.ndarray, spec: TensorSpec, origin: str) -> np.ndarray:
    """Arrays are (N, *input shape without batch); accept (N, *shape) with a leading batch of 1 too. Values must be
    finite numbers: strings failed with a bare 'could not convert string to float' (exit 1), complex numbers lost
    their imaginary part silently, and one NaN made calibration fail with ORT's 'scale issue' (exit 1)."""
    want = spec.shape[1:]
    if array.dtype.kind not in "biuf":
        raise DataError(f"{origin}: array {name!r} holds {array.dtype} values; model input {spec.name!r} takes "
                        f"numbers ({spec.dtype}): save numeric arrays")
    if array.ndim == len(spec.shape) + 1 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != len(spec.shape):
        raise DataError(f"{origin}: array {name!r} has shape {array.shape}; expected (N, {', '.join(map(str, want))})")
    for got, w in zip(array.shape[1:], want):
        if isinstance(w, int) and w > 0 and got != w:
            raise DataError(f"{origin}: array {name!r} has shape {array.shape}; expected (N, {', '.join(map(str, want))})")
    fed = np.ascontiguousarray(array.astype(feed_dtype(spec)))
    if fed.dtype.kind == "f" and not np.isfinite(fed).all():
        bad = int(np.flatnonzero(~np.isfinite(fed).reshape(len(fed), -1).all(axis=1))[0])
        raise DataError(f"{origin}: array {name!r} holds NaN or infinity (first in sample {bad}): calibration and "
                        "eval data must be finite (fill or drop those samples)")
    return fed


def _unreadable(path: Path, exc: Exception, kind: str) -> DataError:
    """Why numpy could not read `path`, in words that fit: it called any file that is not an array file 'pickled
    (object) data' and advised allow_pickle=True (running code from a data file) for a CSV or a text file."""
    if isinstance(exc, EOFError):
        return DataError(f"{path} is empty")
    if "pickle" in str(exc):
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:2] != b"PK" and magic != b"\x93NUMPY":
            return DataError(f"{path} is not an {kind} file (numpy.save{'z' if kind == '.npz' else ''} writes one)")
        return DataError(f"{path} holds Python objects (pickled), which are never loaded: save numeric arrays")
    return DataError(f"{path} is not a readable {kind} file: {exc}")


def load_npz(path: Path, inputs: list[TensorSpec]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except READ_ERRORS as exc:
        raise _unreadable(path, exc, ".npz") from exc
    labels = pop_labels(arrays, inputs, path)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        named = array_for_input(arrays, spec.name)  # Keras inputs: 'feat' for TFLite's 'serving_default_feat:0'
        if named is not None:
            feeds[spec.name] = named
        elif len(inputs) == 1 and len(arrays) == 1:
            only = next(iter(arrays))
            log.warning("%s: using array %r for model input %r", path.name, only, spec.name)
            feeds[spec.name] = arrays[only]
        else:
            raise DataError(
                f"{path} has no array named {spec.name!r} (model inputs: {', '.join(s.name for s in inputs)}; "
                f"arrays: {', '.join(arrays) or 'none'})"
            )
        feeds[spec.name] = fit_sample_shape(spec.name, feeds[spec.name], spec, path.name)
    counts = {len(v) for v in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError(f"{path}: inputs must hold the same, non-zero number of samples")
    if labels is not None:
        labels = class_indices(labels, counts.pop(), path)
    return Dataset(feeds, labels, origin=str(path))


def pop_labels(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], path: Path) -> np.ndarray | None:
    """The .npz's `labels` array, taken out of `arrays`, unless a model input has that name: a token model's input
    `labels` was taken as class indices, so the model missed an input and the gate scored against its token ids.
    One rule (README, `--eval` help): an input named `labels` is fed; the gate then has no labels."""
    if "labels" not in arrays:
        return None
    if any(array_for_input({"labels": arrays["labels"]}, spec.name) is not None for spec in inputs):
        log.warning("%s: array 'labels' feeds model input 'labels' (not class labels): the gate compares with the "
                    "float model's answers", path.name)
        return None
    return arrays.pop("labels")


def class_indices(labels: np.ndarray, count: int, path: Path) -> np.ndarray:
    """An .npz's `labels` as int64 class indices, one per sample. String labels failed with 'invalid literal for
    int()' (exit 1), fractional ones were truncated without a word, one-hot rows were counted as 'N*C entries'."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{path}: 'labels' holds {labels.dtype} values: give integer class indices (0 = the first "
                        "line of --labels)")
    if labels.ndim == 2 and labels.shape == (count, labels.shape[1]) and labels.shape[1] > 1:
        raise DataError(f"{path}: 'labels' has shape {labels.shape}, a row per sample (one-hot?): give one class index "
                        "per sample, e.g. labels.argmax(1)")
    labels = labels.reshape(-1)
    if len(labels) != count:
        raise DataError(f"{path}: 'labels' has {len(labels)} entries but the inputs have {count}")
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))][0]
        raise DataError(f"{path}: 'labels' holds {bad}, not a class index: give whole numbers 0..C-1")
    return labels.astype(np.int64)


def load_npy(path: Path, inputs: list[TensorSpec]) -> Dataset:
    """A single-input model's samples as one .npy array (first axis = sample; no labels: use an .npz for those)."""
    if len(inputs) != 1:
        raise DataError(f"{path}: the model has {len(inputs)} inputs ({', '.join(s.name for s in inputs)}): give an "
                        ".npz with one array per input")
    try:
        array = np.load(path, allow_pickle=False)
    except READ_ERRORS as exc:
        raise _unreadable(path, exc, ".npy") from exc
    if array.ndim == 0 or len(array) == 0:
        raise DataError(f"{path}: no samples")
    return Dataset({inputs[0].name: fit_sample_shape(path.stem, array, inputs[0], path.name)}, None, origin=str(path))
