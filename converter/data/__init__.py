"""Calibration and eval data readers: an .npz named after the model's inputs (eval adds `labels`), a
folder of images, or a video file, each preprocessed exactly as the bundle will preprocess on the device."""

from __future__ import annotations

from pathlib import Path

from edge_agent.bundle import Preprocess, TensorSpec

from ..errors import DataError
from .dataset import Dataset, warn_if_degenerate


def load_dataset(
    source: Path, inputs: list[TensorSpec], preprocess: Preprocess | None, labels: list[str] | None = None,
    max_frames: int = 256, skip_unreadable: bool = False, flat: bool = False, classes: bool = True,
    max_images: int | None = None,
) -> Dataset:
    """Load an .npz file, an image folder (max_images spread evenly: --calibration-samples, --eval-samples) or a
    video file (max_frames sampled evenly) for these inputs."""
    from .image_folder import load_image_folder
    from .npz import load_npy, load_npz
    from .video import is_video, load_video

    source = Path(source)
    if source.is_dir():
        return load_image_folder(source, inputs, preprocess, labels, skip_unreadable, flat, classes, max_images)
    if source.suffix.lower() == ".npz" and source.is_file():
        return load_npz(source, inputs)
    if source.suffix.lower() == ".npy" and source.is_file():  # one array: a single-input model's samples
        return load_npy(source, inputs)
    if is_video(source) and source.is_file():
        return Dataset({inputs[0].name: load_video(source, inputs, preprocess, max_frames)}, None, origin=str(source))
    if not source.exists():
        raise DataError(f"{source} does not exist")
    raise DataError(f"{source}: data must be an .npz file (an .npy for a single-input model), a folder of images "
                    "or a video file")


__all__ = ["Dataset", "load_dataset", "warn_if_degenerate"]
