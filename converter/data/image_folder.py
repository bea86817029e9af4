"""Calibration/eval data from a folder of images (eval: one sub-folder per class), preprocessed exactly as
the bundle will preprocess them on the device."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.pipeline.inputs import IMAGE_SUFFIXES
from edge_agent.pipeline.preprocess import preprocess_image, read_image

from ..errors import DataError
from .dataset import Dataset, feed_dtype, no_image_input

log = logging.getLogger(__name__)


def load_image_folder(folder: Path, inputs: list[TensorSpec], preprocess: Preprocess | None, labels: list[str] | None,
                      skip_unreadable: bool = False, flat: bool = False, classes: bool = True,
                      max_images: int | None = None) -> Dataset:
    """Images preprocessed for the model; `flat` (detectors): sub-folders are not classes, all images are read.
    `classes=False` (calibration, which needs no labels): sub-folders that do not name classes (a dataset's
    cat/ dog/ without --labels) are read flat instead of refused. `max_images` (--calibration-samples,
    --eval-samples): that many, spread evenly over the files sorted by class, so each class keeps its share (a
    50,000-image folder was decoded whole, gigabytes of floats: ImageNet val ran out of memory as eval data)."""
    if preprocess is None or preprocess.kind != "image":
        raise DataError(no_image_input(str(folder), "image folders", inputs))
    if len(inputs) != 1:
        raise DataError(f"{folder}: image folders only work for single-input models")
    subdirs = [] if flat else sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p, folder))
    if subdirs and not classes and any(_class_of(d.name, labels) is None for d in subdirs):
        log.info("%s: its sub-folders do not name classes: every image below it is read", folder)
        subdirs, flat = [], True
    items: list[tuple[Path, int | None]] = []
    if subdirs:  # class folders: named by label name or class index
        for d in subdirs:
            cls = _class_of(d.name, labels)
            if cls is None:
                raise DataError(f"{folder}: class folder {d.name!r} is neither a label name nor a class index: pass "
                                "--labels FILE with the class names in the model's output order")
            items += [(f, cls) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
                      and not _hidden(f, folder)]
    else:
        found = folder.rglob("*") if flat else folder.iterdir()
        items = [(f, None) for f in sorted(found) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                 and not _hidden(f, folder)]
    if not items:
        arrays = any(f.suffix.lower() in (".npy", ".npz") for f in folder.rglob("*"))
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})" + (
            "; its .npy/.npz files are not read one per sample: stack them into one .npz named after the model's "
            "input, e.g. numpy.savez('data.npz', input=numpy.stack(arrays))" if arrays else ""))
    available = len(items) if max_images is not None and len(items) > max_images else None
    if available:
        from .video import frame_indices

        log.info("%s: %d of its %d images read, spread evenly (%s)", folder, max_images, available,
                 "--eval-samples" if classes else "--calibration-samples")
        items = [items[i] for i in frame_indices(len(items), max_images)]
    tensors, kept, skipped, sizes = [], [], [], []
    for f, c in items:
        try:
            image = read_image(str(f))
        except Exception as exc:
            if not skip_unreadable:
                raise DataError(f"{f}: cannot read image ({exc}); pass --skip-unreadable-images to leave such files "
                                "out (they are counted in the report)") from exc
            skipped.append(str(f))
            continue
        try:
            tensor, _ = preprocess_image(image, preprocess, inputs[0])
        except Exception as exc:
            raise DataError(f"{f}: cannot preprocess image: {exc}") from exc
        tensors.append(tensor[0])
        kept.append((f, c))
        sizes.append((int(image.shape[0]), int(image.shape[1])))
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", folder, len(skipped), len(items))
    if not tensors:
        raise DataError(f"{folder}: none of its {len(items)} images could be read")
    y = np.array([c for _, c in kept], dtype=np.int64) if subdirs else None
    return Dataset({inputs[0].name: np.stack(tensors).astype(feed_dtype(inputs[0]))}, y, origin=str(folder), skipped=skipped,
                   files=[str(f) for f, _ in kept], frames_hw=sizes, available=available)


def _hidden(path: Path, folder: Path) -> bool:
    """Under a hidden folder or hidden itself: Jupyter's .ipynb_checkpoints/ beside the class folders was refused as
    'class folder .ipynb_checkpoints is neither a label name nor a class index' (its copies calibrated twice), and
    macOS's ._photo.jpg companions (resource forks, not images) stopped the run as unreadable images."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _class_of(name: str, labels: list[str] | None) -> int | None:
    """The class a sub-folder names: a label name, or a class index."""
    if labels and name in labels:
        return labels.index(name)
    return int(name) if name.isdigit() else None
