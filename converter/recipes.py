"""Recipes: which passes a conversion runs, in what order, for a profile and output format."""

from __future__ import annotations

from device_profiles import Profile

from .errors import ConversionError
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

FORMATS = ("onnx",)


def choose_format(profile: Profile, requested: str) -> str:
    """The output format: the user's choice, or the profile's most preferred one this build supports."""
    if requested != "auto":
        if requested not in FORMATS:
            raise ConversionError(f"--format {requested} is not supported by this converter (supported: {', '.join(FORMATS)})")
        return requested
    for fmt in profile.runtime.formats:
        if fmt in FORMATS:
            return fmt
    raise ConversionError(f"profile {profile.name} prefers {', '.join(profile.runtime.formats)}; none is supported here")


def onnx_recipe() -> list[Pass]:
    """import -> clean-up -> quantize -> mixed-precision fallback -> accuracy gate -> host benchmark -> self-test -> package."""
    return [ImportPass(), CleanupPass(), QuantizePass(), MixedPrecisionPass(), AccuracyGatePass(), HostBenchmarkPass(), SelfTestPass(), PackagePass()]


def recipe_for(profile: Profile, fmt: str) -> list[Pass]:
    if fmt == "onnx":
        return onnx_recipe()
    raise ConversionError(f"no recipe for format {fmt}")
