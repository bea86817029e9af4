"""The in-memory calibration/eval data every pass reads: inputs by name (first axis = sample), optional labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Samples for every model input (first axis = sample), optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (--skip-unreadable-images)
    files: list[str] | None = None  # image files, one per sample (ground-truth boxes are matched by file name)
    frames_hw: list[tuple[int, int]] | None = None  # original image sizes, to map labelled boxes into the input
    available: int | None = None  # images the folder held when fewer were read (--eval/--calibration-samples)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Feeds for sample i, each with a batch axis of 1."""
        return {k: v[i : i + 1] for k, v in self.inputs.items()}

    def head(self, n: int) -> "Dataset":
        return self.take(slice(0, n))

    def take(self, index: np.ndarray | slice) -> "Dataset":
        """The samples at `index` (an index array or slice along the sample axis)."""
        pick = (lambda xs: None if xs is None else [xs[i] for i in np.arange(len(xs))[index]])  # noqa: E731
        return Dataset({k: v[index] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[index],
                       self.origin, list(self.skipped), pick(self.files), pick(self.frames_hw))

    def interleaved_halves(self) -> tuple["Dataset", "Dataset"]:
        """Even- and odd-numbered samples: two halves that both span an ordered file (video, sorted folder)."""
        return self.take(slice(0, None, 2)), self.take(slice(1, None, 2))


def warn_if_degenerate(data: Dataset, what: str) -> list[str]:
    """Log (and return) a warning for each input whose samples are all the same: such data
    cannot calibrate int8 ranges or measure accuracy."""
    warnings = []
    for name, arr in data.inputs.items():
        if arr.dtype == bool:  # a mask: all-true is normal (no padding), never quantized; np.ptp cannot subtract bools
            continue
        if len(arr) > 1 and float(np.ptp(arr, axis=0).max()) < 1e-6:
            warnings.append(f"{what} data for input {name!r} is the same in all {len(arr)} samples: "
                            "give representative inputs")
            log.warning(warnings[-1])
    return warnings



def feed_dtype(spec) -> np.dtype:
    """The dtype the model takes: integer/bool inputs (token ids, masks, uint8 pixels) keep theirs, else float32.
    A quantized integer input (full-int8 .tflite) takes floats: the runtime quantizes them with its parameters."""
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        return np.dtype(np.float32)
    if getattr(spec, "quantization", None) is not None:
        return np.dtype(np.float32)
    return dtype if dtype.kind in "iub" else np.dtype(np.float32)


def no_image_input(origin: str, what: str, inputs: list) -> str:
    """Why images cannot feed this model, and what to do: the input's shape decides (--mean/--std cannot help)."""
    first = inputs[0]
    shape = list(first.shape)
    known = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(shape) == 4 and None in known:
        dims = [1, known[1], known[2] or 640, known[3] or 640] if known[1] in (1, 3) else \
            [1, known[1] or 640, known[2] or 640, known[3] or 3]
        return (f"{origin}: {what} need a fixed input size, and input {first.name!r} is {shape}: pin it with "
                f"--input-shape, e.g. --input-shape {'x'.join(map(str, dims))}")
    layout = f" ({first.layout})" if getattr(first, "layout", "ANY") in ("NCHW", "NHWC") else ""
    return (f"{origin}: {what} need an image input (NCHW or NHWC, 1 or 3 channels); input {first.name!r} is "
            f"{first.dtype}{shape}{layout}: give an .npz with one array per model input, or the right --layout")
