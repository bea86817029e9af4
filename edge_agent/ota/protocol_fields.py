"""Field checks of the OTA protocol's JSON messages (protocol.py): each raises ProtocolError with a one-line reason.

Kept apart from the message classes so each module stays readable; protocol.py re-exports what others use.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_JSON_BYTES = 256 * 1024  # larger control messages are refused (oversized input)
MAX_INT = 2**63 - 1  # versions and counters: what a registry column (SQLite, PostgreSQL BIGINT) holds
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(ValueError):
    """A message does not follow the protocol (one line, says what was wrong)."""


def _finite(value: int | float, what: str) -> float:
    """json.loads takes NaN, Infinity and 400-digit integers; none belongs in a registry row or `--json` output."""
    if not math.isfinite(number := float(value) if abs(value) < 1e308 else math.inf):  # NaN: float, not finite
        raise ProtocolError(f"{what} must be a finite number")
    return number


def _count(o: dict, key: str) -> int:
    return _counter(_get(o, key, int, "telemetry"), f"telemetry.{key}")  # type: ignore[return-value]


def _counter(value: int | None, what: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_INT:
        raise ProtocolError(f"{what} must be between 0 and {MAX_INT}")
    return value


def _series_id(value: str | None) -> str | None:
    if value is not None and not _ID_RE.match(value):
        raise ProtocolError("reported.boot_id must be 1-64 of [A-Za-z0-9._-]")
    return value


def _numbers(values: dict[str, Any], what: str) -> dict[str, float]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
        raise ProtocolError(f"{what} values must be numbers")
    return {k: _finite(v, f"{what}.{k}") for k, v in values.items()}


def _fraction(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ProtocolError(f"{what} must be between 0 and 1")
    return float(value)


def _load(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError(f"{what} message is {len(payload)} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} message must be a JSON object")
    return obj


def _get(obj: dict, key: str, kind: type | tuple, what: str, optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise ProtocolError(f"{what} message has no '{key}'")
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"{what} field '{key}' has the wrong type (bool)")
    if not isinstance(value, kind):
        raise ProtocolError(f"{what} field '{key}' has the wrong type ({type(value).__name__})")
    if isinstance(value, str) and "\x00" in value:  # a PostgreSQL text column refuses it (a DataError per report);
        value = value.replace("\x00", "\ufffd")  # a failed device's report is kept; ids are checked by pattern
    return value
