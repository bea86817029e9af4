"""The fleet's errors and exit codes: one root (FleetError), one table of codes, one CLI wrapper.

EXIT_CODES is plain data (code, name, meaning) so that `edge-fleet --help` is generated from
it and a later pass can merge it with the agent's and the converter's tables. Each error class
names its code by `code_name`; a name missing from the table fails at import, not at run time.
The bundle's own errors (edge_agent.bundle, codes 10-18) keep their codes on their classes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ExitCode:
    """One exit code of `edge-fleet`: the number, a stable name, and what it means to a user."""

    code: int
    name: str
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "ok"),
    ExitCode(1, "error", "other error"),
    ExitCode(2, "usage", "usage (bad command line)"),
    ExitCode(3, "not_found", "unknown rollout, device or token"),
    ExitCode(4, "unknown_bundle", "unknown bundle (NAME:VERSION not published)"),
    ExitCode(5, "no_targets", "no target device can take the bundle"),
    ExitCode(6, "rollout_conflict", "device busy in another rollout"),
    ExitCode(7, "rollout_halted", "rollout halted (deploy --wait)"),
    ExitCode(8, "connection_failed", "MQTT connection failed (unreachable, refused, bad login)"),
    ExitCode(9, "version_conflict", "version already published with another file"),
    ExitCode(20, "action_refused", "the rollout cannot do that now (e.g. resume one that is not paused)"),
    ExitCode(21, "access_denied", "fleet API: token missing, wrong, revoked, or its role may not do this"),
    ExitCode(22, "api_failed", "fleet API unreachable, or it refused the request (too large, malformed)"),
    ExitCode(60, "broker_unavailable", "no MQTT broker installed (apt-get install mosquitto, or amqtt)"),
    ExitCode(61, "broker_start_failed", "embedded broker did not start (port in use, bad config)"),
    ExitCode(62, "registry_unusable", "registry cannot be used (newer schema, unsupported --db)"),
)

_BY_NAME = {e.name: e.code for e in EXIT_CODES}


def exit_code(name: str) -> int:
    """The code registered under `name` (KeyError for a name that is not in EXIT_CODES)."""
    return _BY_NAME[name]


class FleetError(Exception):
    """Root of every fleet-side failure a user can act on: a one-line message and an exit code.

    `detail` holds what does not fit on one line (a broker's log tail); the CLI prints it with -v.
    """

    code_name = "error"
    exit_code = exit_code("error")

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.exit_code = exit_code(cls.code_name)

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class UnknownBundle(FleetError):
    """NAME:VERSION (or a SHA-256) is not published in the registry."""

    code_name = "unknown_bundle"


class NoTargets(FleetError):
    """A deployment selects no device that can take the bundle."""

    code_name = "no_targets"


class RolloutConflict(FleetError):
    """A device is already part of another running rollout."""

    code_name = "rollout_conflict"


class RolloutHalted(FleetError):
    """A rollout stopped because too many devices failed (raised by `deploy --wait`)."""

    code_name = "rollout_halted"


class NotFound(FleetError):
    """A rollout, device or token that the registry does not have."""

    code_name = "not_found"


class ActionRefused(FleetError):
    """An operator's request that the rollout's status does not allow (states.ACTION_FROM)."""

    code_name = "action_refused"


class AccessDenied(FleetError):
    """The API refused the token: missing, unknown, revoked, or its role is below the one needed."""

    code_name = "access_denied"


class ApiFailed(FleetError):
    """The fleet API could not be reached, or refused the request for a reason without its own code."""

    code_name = "api_failed"


class ConnectionFailed(FleetError):
    """The MQTT broker could not be reached or refused the login."""

    code_name = "connection_failed"


class VersionConflict(FleetError):
    """NAME:VERSION for this profile is already published with different content."""

    code_name = "version_conflict"


class BrokerUnavailable(FleetError):
    """No usable broker implementation is installed."""

    code_name = "broker_unavailable"


class BrokerStartError(FleetError):
    """A broker was found but failed to start (`detail` holds its log tail)."""

    code_name = "broker_start_failed"


class RegistryUnusable(FleetError):
    """The registry cannot be opened: its schema is newer than this code, or its URL is not supported."""

    code_name = "registry_unusable"


def exit_codes_epilog(extra: list[tuple[int, str]] | None = None) -> str:
    """`exit codes:` help text generated from EXIT_CODES (plus `extra` (code, meaning) rows)."""
    rows = sorted([(e.code, e.meaning) for e in EXIT_CODES] + list(extra or []))
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in rows) + "\n"


def run_cli(prog: str, body: Callable[[], int], handled: tuple[type[Exception], ...] = (),
            verbose: bool = False) -> int:
    """Run a CLI body: a FleetError (or one of `handled`, which carry `exit_code`) becomes ONE line
    `PROG: error: ...` on stderr and its exit code; OSError becomes one line and exit 1. No tracebacks."""
    try:
        return body()
    except (FleetError, *handled) as exc:
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        detail = getattr(exc, "detail", None)
        if detail and verbose:
            print(detail, file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except OSError as exc:
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exit_code("error")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
