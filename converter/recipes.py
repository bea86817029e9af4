"""Recipes: which passes a conversion runs, in what order, for a profile and output format."""

from __future__ import annotations

import importlib.util

from device_profiles import Profile

from .errors import ConversionError, FormatError
from .importers import TENSORFLOW_FORMATS, detect_format
from .passes import (
    AccuracyGatePass,
    CleanupPass,
    HostBenchmarkPass,
    MixedPrecisionPass,
    ImportPass,
    PackagePass,
    Pass,
    QuantizePass,
    SelfTestPass,
)
from .passes.tflite_convert import TFLiteConvertPass
from .passes.tflite_mixed_precision import TFLiteMixedPrecisionPass

FORMATS = ("onnx", "tflite")


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

    (`auto` is not resolved here: the converter builds and measures every candidate, see auto_format.)
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


def onnx_recipe() -> list[Pass]:
    """import -> clean-up -> quantize -> mixed-precision fallback -> accuracy gate -> host benchmark -> self-test -> package."""
    return [ImportPass(), CleanupPass(), QuantizePass(), MixedPrecisionPass(), AccuracyGatePass(), HostBenchmarkPass(), SelfTestPass(), PackagePass()]


def tflite_recipe() -> list[Pass]:
    """import -> clean-up (ONNX sources) -> TFLite convert -> mixed-precision fallback -> accuracy gate -> host benchmark
    -> self-test -> package."""
    return [ImportPass(), CleanupPass(), TFLiteConvertPass(), TFLiteMixedPrecisionPass(), AccuracyGatePass(), HostBenchmarkPass(), SelfTestPass(),
            PackagePass()]


def recipe_for(profile: Profile, fmt: str) -> list[Pass]:
    if fmt == "onnx":
        return onnx_recipe()
    if fmt == "tflite":
        return tflite_recipe()
    raise ConversionError(f"no recipe for format {fmt}")
