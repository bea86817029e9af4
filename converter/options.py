"""Conversion options: the few every pass may read, and the type a pass declares its own options with.

Options that belong to one step (the import's preprocessing, the quantizer's op set, the sensitivity
search ...) are declared by that pass (`default_config()`, converter.passes.base) and given in
`ConvertOptions.pass_options`; the command line generates their flags from those declarations.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_agent.cli_types import whole_number  # noqa: F401 - re-exported: the converter's CLI and passes use it


@dataclass
class ConvertOptions:
    """What the user asked for that concerns the whole conversion (the command line's global options)."""

    source: str
    profile: str
    out: Path
    key: Path
    calibration: Path | None = None
    evaluation: Path | None = None
    eval_labels: Path | None = None  # detectors: ground-truth boxes for the eval images (COCO JSON or YOLO txt folder)
    calibration_samples: int = 256  # calibration samples used (also: video frames sampled)
    eval_samples: int = 1000  # images read from an eval folder, spread evenly over its classes
    precision: str | None = None  # override the profile's recipe
    labels: list[str] | None = None
    max_accuracy_drop: float | None = None  # percentage points; default: profile
    min_agreement: float | None = None  # default: profile
    max_map_drop: float | None = None  # detectors with --eval-labels: mAP@0.5 points; default 3
    min_cosine: float = 0.99  # gate for outputs that are not class scores
    force: bool = False
    bench_runs: int = 50  # host benchmark runs (0: no timing at all)
    reproducible: bool = False  # leave wall-clock figures out of the manifest
    pass_options: dict[str, Any] = field(default_factory=dict)  # by option name, as the passes declare them
    command: tuple[str, ...] = ()  # edge-convert's arguments, for the commands a failed gate suggests


@dataclass(frozen=True)
class PassOption:
    """One typed, documented option a pass declares (like Olive's PassConfigParam).

    type_ parses the command-line text; flag None means `--name-with-dashes`, "" means no flag (API only);
    check raises ValueError for a value that parses but makes no sense (reported as a usage error, exit 2);
    precisions: the recipes the option acts on (None: any); given at another it is warned about, not ignored silently.
    """

    type_: Callable[[str], Any]
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    check: Callable[[Any], Any] | None = None
    precisions: tuple[str, ...] | None = None
    repeat: bool = False  # the flag may be given several times; the value is then the list of them

    def cli_flag(self, name: str) -> str | None:
        return None if self.flag == "" else (self.flag or "--" + name.replace("_", "-"))


INT8_STATIC = ("int8-static",)  # PassOption.precisions of the calibration, compensation and mixed-precision options


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers."""
    return [float(x) for x in text.split(",") if x.strip()]


def input_shape(text: str) -> list[int] | dict[str, list[int]]:
    """argparse type: 1x3x224x224 (or 1,3,224,224), or NAME=1x3x224x224 for one input of several."""
    name, named, dims_text = text.rpartition("=")
    try:
        dims = [int(x) for x in dims_text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like 1x3x224x224 or NAME=1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims) or (named and not name):
        raise argparse.ArgumentTypeError(f"input shape {text!r} must have positive dimensions (and a name before '=')")
    return {name: dims} if named else dims


def input_shapes(value: Any) -> list[int] | dict[str, list[int]] | None:
    """The --input-shape values as one: a bare shape (a single-input model's) or shapes by input name. A model with
    several dynamic inputs could not be pinned ('gives one shape but the model has 2 inputs'); the flag now repeats
    as NAME=SHAPE. A bare shape among several is refused: which input would it be?"""
    if value is None or isinstance(value, dict):
        return value
    items = list(value)
    if all(isinstance(x, int) for x in items):  # the API's one shape
        return items or None
    if len(items) == 1:
        return items[0]
    if not all(isinstance(x, dict) for x in items):
        raise ValueError("--input-shape given several times: name each input's, e.g. --input-shape ids=1x128 "
                         "--input-shape mask=1x128")
    merged: dict[str, list[int]] = {}
    for shapes in items:
        twice = set(shapes) & set(merged)
        if twice:
            raise ValueError(f"--input-shape gives input {twice.pop()!r} twice")
        merged.update(shapes)
    return merged
