"""Typed conversion errors with exit codes for `edge-convert`."""

from __future__ import annotations


class ConversionError(Exception):
    """The conversion cannot continue; the message says what to change."""

    exit_code = 1


class UsageError(ConversionError):
    """An option value is malformed (e.g. --accuracy-budget, --calibration-method)."""

    exit_code = 2


class FormatError(UsageError):
    """The requested bundle format cannot be built from this source (a usage error)."""

    exit_code = 2


class NothingToQuantize(UsageError):
    """--precision asks for something this model has nothing to apply to (int4-weight on a Conv-only net)."""

    exit_code = 2


class ImportFailed(ConversionError):
    """The source model cannot be loaded (wrong path, factory, format or input shape)."""

    exit_code = 21


class DataError(ConversionError):
    """Calibration or eval data does not match the model."""

    exit_code = 22


class GateFailed(ConversionError):
    """The converted model lost more accuracy than the budget allows (use --force to write anyway)."""

    exit_code = 30


class BundleTooLarge(ConversionError):
    exit_code = 31
