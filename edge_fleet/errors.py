"""The fleet's errors: one root (FleetError) under edgekit's shared EdgekitError.

Codes are defined once for every CLI in edge_agent.errors.EXIT_CODES; each class here names its
code by `code_name` (an unknown name fails at import). `edge-fleet --help` lists the codes from
that table, and edge_agent.errors.run_main turns any error into one line and its code.
"""

from __future__ import annotations

from typing import Callable

from edge_agent.errors import FLEET, EdgekitError, exit_code, exit_codes_epilog as _epilog, run_main


class FleetError(EdgekitError):
    """Root of every fleet-side failure a user can act on: a one-line message and an exit code.

    `detail` holds what does not fit on one line (a broker's log tail); the CLI prints it with -v.
    """


class FleetUsageError(FleetError):
    """A bad option value (stages, failure budget, a device id, no trusted key): exit 2 like argparse's own."""

    code_name = "usage"
    kind = "error"  # the API's error field stays what it was for these


class UnknownBundle(FleetError):
    """NAME:VERSION (or a SHA-256) is not published in the registry."""

    code_name = "unknown-bundle"


class NoTargets(FleetError):
    """A deployment selects no device that can take the bundle."""

    code_name = "no-targets"


class RolloutConflict(FleetError):
    """A device is already part of another running rollout."""

    code_name = "rollout-conflict"


class RolloutHalted(FleetError):
    """A rollout stopped because too many devices failed (raised by `deploy --wait`)."""

    code_name = "rollout-halted"


class WaitTimeout(FleetError):
    """`deploy --wait --wait-timeout S` ran out while the rollout was still active (it goes on)."""

    code_name = "wait-timeout"


class NotFound(FleetError):
    """A rollout, device or token that the registry does not have."""

    code_name = "not-found"


class ActionRefused(FleetError):
    """An operator's request that the rollout's status does not allow (states.ACTION_FROM), when asked or
    when the server came to apply it (the rollout changed meanwhile). `status`: the rollout's status then."""

    code_name = "action-refused"

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.fields = {"status": status} if status is not None else {}  # added to the API's JSON error


class AccessDenied(FleetError):
    """The API refused the token: missing, unknown, revoked, or its role is below the one needed."""

    code_name = "access-denied"


class ApiFailed(FleetError):
    """The fleet API could not be reached, or refused the request for a reason without its own code."""

    code_name = "api-failed"


class PortUnavailable(FleetError):
    """The HTTP server (API and console) could not listen on its port."""

    code_name = "port"


class ConnectionFailed(FleetError):
    """The MQTT broker could not be reached or refused the login."""

    code_name = "connection-failed"


class TokenExists(FleetError):
    """A live API token already has the name asked for (HTTP 409: the request is fine, the name is taken)."""

    code_name = "token-exists"


class VersionConflict(FleetError):
    """NAME:VERSION for this profile is already published with different content."""

    code_name = "version-conflict"

    @classmethod
    def immutable(cls, name: str, version: int, profile: str, stored_sha: str) -> "VersionConflict":
        return cls(f"{name} v{version} for {profile} is already published with another file "
                   f"(sha256 {stored_sha[:12]}...): versions are immutable, convert with a higher --model-version")


class BrokerUnavailable(FleetError):
    """No usable broker implementation is installed."""

    code_name = "broker-unavailable"


class BrokerStartError(FleetError):
    """A broker was found but failed to start (`detail` holds its log tail)."""

    code_name = "broker-start-failed"


class RegistryUnusable(FleetError):
    """The registry cannot be opened: its schema is newer than this code, or its URL is not supported."""

    code_name = "registry-unusable"


class RegistryUnreachable(FleetError):
    """The registry's database server cannot be reached, or refused the login."""

    code_name = "registry-unreachable"


def exit_codes_epilog() -> str:
    """`edge-fleet --help`'s exit codes, generated from the shared table."""
    return _epilog(FLEET)


def run_cli(prog: str, body: Callable[[], int], verbose: bool = False, json_mode: bool = False) -> int:
    """Run a CLI body: any failure becomes ONE line `PROG: error: ...` and its exit code (no traceback)."""
    return run_main(prog, body, json_mode=json_mode, verbose=verbose)


__all__ = ["FleetError", "exit_code", "exit_codes_epilog", "run_cli"]
