"""`edge-convert`'s exit codes (one registry, data only) and its typed errors, all under ConversionError.

Each error class takes its code from EXIT_CODES by name; `edge-convert --help` prints the table from
here. Two codes come from errors raised outside the converter: 13 (edge_agent.bundle's SignatureError,
an unusable signing key) and 20 (device_profiles.ProfileError).
"""

from __future__ import annotations

from typing import NamedTuple


class ExitCode(NamedTuple):
    code: int
    name: str
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "ok"),
    ExitCode(1, "error", "other error"),
    ExitCode(2, "usage", "usage (bad option values)"),
    ExitCode(13, "signing-key", "signing key unusable"),
    ExitCode(20, "profile", "bad device profile"),
    ExitCode(21, "import", "model cannot be imported"),
    ExitCode(22, "data", "calibration/eval data does not fit the model"),
    ExitCode(30, "gate", "accuracy gate failed (nothing written; --force writes anyway)"),
    ExitCode(31, "too-large", "bundle over the profile's size limit"),
    ExitCode(130, "interrupted", "interrupted (Ctrl-C)"),
)
CODES = {e.name: e.code for e in EXIT_CODES}


def exit_codes_help(width: int = 100) -> str:
    """The `exit codes:` epilog of --help, generated from EXIT_CODES."""
    lines: list[str] = []
    for e in EXIT_CODES:
        item = f"{e.code} {e.meaning}"
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += "   " + item
        else:
            lines.append("  " + item)
    return "exit codes:\n" + "\n".join(lines) + "\n"


class ConversionError(Exception):
    """The conversion cannot continue; the message says what to change."""

    exit_code = CODES["error"]


class UsageError(ConversionError):
    """An option value is malformed (e.g. --accuracy-budget, --calibration-method)."""

    exit_code = CODES["usage"]


class FormatError(UsageError):
    """The requested bundle format cannot be built from this source (a usage error)."""


class NothingToQuantize(UsageError):
    """--precision asks for something this model has nothing to apply to (int4-weight on a Conv-only net)."""


class ImportFailed(ConversionError):
    """The source model cannot be loaded (wrong path, factory, format or input shape)."""

    exit_code = CODES["import"]


class DataError(ConversionError):
    """Calibration or eval data does not match the model."""

    exit_code = CODES["data"]


class GateFailed(ConversionError):
    """The converted model lost more accuracy than the budget allows (use --force to write anyway)."""

    exit_code = CODES["gate"]


class BundleTooLarge(ConversionError):
    """The converted model is over the profile's max_bundle_mb."""

    exit_code = CODES["too-large"]
