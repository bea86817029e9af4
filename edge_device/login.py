"""The broker login `edge-device setup` gives the agent: read on the host, never from a command line.

A password comes from a file or standard input (`--mqtt-password-file -`), or the whole login from
what `edge-fleet devices login ID --json` printed (`--fleet-login FILE|-`). On the device it is
written by `setup` as a 0600 credentials file (edge_agent.ota.credentials) that the service reads,
sent over the SSH channel's stdin, so it never appears in a process list on either side.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_agent.errors import EdgekitError
from edge_agent.ota.credentials import BrokerCredentials


class LoginOptionError(EdgekitError):
    code_name = "usage"


@dataclass(frozen=True)
class DeviceLogin:
    """What the host hands the device: user name and password, and the CA file to push (host path)."""

    username: str | None
    password: str | None
    tls_ca: Path | None
    device_id: str | None = None  # from a fleet login: the device the login was made for

    def credentials(self, device_ca_path: str | None) -> BrokerCredentials:
        return BrokerCredentials(self.username, self.password, device_ca_path if self.tls_ca else None)


def _read(source: Path, stdin: TextIO | None) -> str:
    if str(source) == "-":
        return (stdin or sys.stdin).read()
    try:
        return source.read_text()
    except OSError as exc:
        raise LoginOptionError(f"{source}: {exc.strerror or exc}") from None


def read_login(username: str | None, password_file: Path | None, tls_ca: Path | None, fleet_login: Path | None,
               stdin: TextIO | None = None) -> DeviceLogin | None:
    """The login the setup options describe (None: none given). One line for what does not fit."""
    if str(password_file) == "-" and str(fleet_login) == "-":
        raise LoginOptionError("--mqtt-password-file - and --fleet-login - cannot both read standard input")
    if tls_ca is not None and not tls_ca.is_file():
        raise LoginOptionError(f"--mqtt-tls-ca {tls_ca}: no such file")
    device_id = password = None
    if fleet_login is not None:
        try:
            data = json.loads(_read(fleet_login, stdin))
            username, password, device_id = data.get("username") or username, str(data["password"]), data["device_id"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LoginOptionError(f"--fleet-login {fleet_login}: not the JSON `edge-fleet devices login ID --json` "
                                   "prints") from None
    if password_file is not None:
        lines = _read(password_file, stdin).splitlines()
        if not lines or not lines[0]:
            raise LoginOptionError(f"--mqtt-password-file {password_file}: empty (the password is its first line)")
        password = lines[0]
    if username is not None and password is None:
        raise LoginOptionError("--mqtt-username needs --mqtt-password-file FILE (or - for stdin) or --fleet-login")
    if password is None and tls_ca is None:
        return None
    return DeviceLogin(username, password, tls_ca, device_id)
