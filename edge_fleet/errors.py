"""Typed fleet errors: one-line messages and the exit code the `edge-fleet` CLI uses."""

from __future__ import annotations


class FleetError(Exception):
    """Base class for fleet-side failures a user can act on."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnknownBundle(FleetError):
    """NAME:VERSION (or a SHA-256) is not published in the registry."""

    exit_code = 4


class NoTargets(FleetError):
    """A deployment selects no device that can take the bundle."""

    exit_code = 5


class RolloutConflict(FleetError):
    """A device is already part of another running rollout."""

    exit_code = 6


class RolloutHalted(FleetError):
    """A rollout stopped because too many devices failed (raised by `deploy --wait`)."""

    exit_code = 7


class ConnectionFailed(FleetError):
    """The MQTT broker could not be reached or refused the login."""

    exit_code = 8


class RegistryUnusable(FleetError):
    """The registry cannot be opened: its schema is newer than this code, or its URL is not supported."""

    exit_code = 62
