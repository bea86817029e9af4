"""`edge-convert`'s exit codes (one registry, data only) and its typed errors, all under ConversionError.

Each error class takes its code from EXIT_CODES by name; `edge-convert --help` prints the table from
here. Two codes come from errors raised outside the converter: 13 (edge_agent.bundle's SignatureError,
an unusable signing key) and 20 (device_profiles.ProfileError).
"""

from __future__ import annotations

from edge_agent.errors import CONVERT, EdgekitError, exit_code, exit_codes_epilog

CODES = {name: exit_code(name) for name in ("error", "usage", "signature", "profile", "import", "data", "gate",
                                             "too-large", "interrupted")}


def exit_codes_help(width: int = 100) -> str:
    """The `exit codes:` epilog of --help, generated from edge_agent.errors.EXIT_CODES."""
    return exit_codes_epilog(CONVERT)


class ConversionError(EdgekitError):
    """The conversion cannot continue; the message says what to change."""


class UsageError(ConversionError):
    """An option value is malformed (e.g. --accuracy-budget, --calibration-method)."""

    code_name = "usage"


class FormatError(UsageError):
    """The requested bundle format cannot be built from this source (a usage error)."""


class NothingToQuantize(UsageError):
    """--precision asks for something this model has nothing to apply to (int4-weight on a Conv-only net)."""


class ImportFailed(ConversionError):
    """The source model cannot be loaded (wrong path, factory, format or input shape)."""

    code_name = "import"


class DataError(ConversionError):
    """Calibration or eval data does not match the model."""

    code_name = "data"


class GateFailed(ConversionError):
    """The converted model lost more accuracy than the budget allows (use --force to write anyway)."""

    code_name = "gate"


class BundleTooLarge(ConversionError):
    """The converted model is over the profile's max_bundle_mb."""

    code_name = "too-large"
