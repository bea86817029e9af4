"""Recipes: which passes a conversion runs, in what order, per bundle format: defined once, as data.

An explicit --format runs its recipe; --format auto runs the recipes' shared prefix once, each candidate's
recipe up to and including the accuracy gate, and the rest of the recipe for the format it picks
(converter.pipeline).
"""

from __future__ import annotations

import importlib.util

from device_profiles import FORMATS, Profile

from .errors import ConversionError, FormatError
from .importers import TENSORFLOW_FORMATS, detect_format

GATE = "accuracy-gate"  # the pass every candidate of --format auto runs last before the candidates are timed
# Which passes a conversion runs, in order, per bundle format (pass names: converter.passes).
RECIPES: dict[str, tuple[str, ...]] = {
    "onnx": ("import", "cleanup", "fold-input", "quantize", "mixed-precision", GATE, "host-benchmark", "selftest", "reference-stats",
             "package"),
    "tflite": ("import", "cleanup", "fold-input", "tflite-convert", "tflite-mixed-precision", GATE, "host-benchmark", "selftest",
               "reference-stats", "package"),
}


def formats_for_source(source: str) -> tuple[str, ...]:
    """Bundle formats a source can become: TF/TFLite sources only TFLite; ONNX/PyTorch both."""
    return ("tflite",) if detect_format(source) in TENSORFLOW_FORMATS else FORMATS


def tflite_available(source: str) -> bool:
    """Whether this host has the TFLite converter toolchain for `source` (edgekit[tflite])."""
    kind = detect_format(source)
    if kind == "tflite":
        return True  # re-packaging needs only an interpreter
    needed = ("tensorflow",) if kind in TENSORFLOW_FORMATS else ("onnx2tf", "tensorflow")
    return all(importlib.util.find_spec(m) is not None for m in needed)


def choose_format(profile: Profile, requested: str | None, source: str | None = None) -> str:
    """The output format for one explicit choice. None: onnx, or tflite for TensorFlow/TFLite sources.

    (`auto` is not resolved here: the converter builds and measures every candidate, see converter.pipeline.)
    """
    allowed = formats_for_source(source) if source else FORMATS
    if requested in (None, ""):
        return allowed[0]
    if requested not in FORMATS:
        raise FormatError(f"--format {requested} is not supported by this converter (supported: {', '.join(FORMATS)})")
    if requested not in allowed:
        raise FormatError(f"{source} is a {detect_format(source)} source: it converts to TFLite bundles only (--format tflite)")
    return requested


def auto_candidates(profile: Profile, source: str) -> list[str]:
    """Formats `--format auto` builds: the profile's formats, best first, that the source and host allow."""
    allowed = formats_for_source(source)
    out = [f for f in profile.runtime.formats if f in allowed and (f != "tflite" or tflite_available(source))]
    if not out:
        raise ConversionError(
            f"profile {profile.name} allows {', '.join(profile.runtime.formats)}, none of which this source/host can build "
            "(TFLite needs pip install 'edgekit[tflite]')")
    return out


def recipe_for(fmt: str) -> tuple[str, ...]:
    """The pass names a conversion to `fmt` runs."""
    if fmt not in RECIPES:
        raise ConversionError(f"no recipe for format {fmt}")
    return RECIPES[fmt]


def shared_prefix() -> tuple[str, ...]:
    """The leading passes every recipe runs alike, before any format-specific one (--format auto runs them once)."""
    recipes = list(RECIPES.values())
    n = 0
    while all(len(r) > n and r[n] == recipes[0][n] and r[n] != GATE for r in recipes):
        n += 1
    return recipes[0][:n]


def split_for_candidates(fmt: str, prefix: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A recipe after `prefix`, cut after the gate: (what each --format auto candidate builds, what the winner finishes)."""
    rest = recipe_for(fmt)[len(prefix):]
    cut = rest.index(GATE) + 1
    return rest[:cut], rest[cut:]
