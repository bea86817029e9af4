"""The agent's broker login kept in a file, so no password is ever on a command line (or in `ps`).

`edge-device setup` writes it (mode 0600, owned by the service user) and the unit's
`edge-agent serve --credentials FILE` reads it. One `KEY=VALUE` per line, the value taken literally
to the end of the line (no quoting, so any password survives as is); `#` starts a comment line:

    EDGE_AGENT_MQTT_USERNAME=pi-17
    EDGE_AGENT_MQTT_PASSWORD=...
    EDGE_AGENT_MQTT_TLS_CA=/opt/edgekit/broker-ca.pem

The names are those of the environment variables the agent also reads, so the same file can serve
as a systemd `EnvironmentFile=` for values without quotes or backslashes. The JSON that
`edge-fleet devices login ID --json` prints is read too (its user name and password).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import AgentError

log = logging.getLogger(__name__)

KEYS = {"EDGE_AGENT_MQTT_USERNAME": "username", "EDGE_AGENT_MQTT_PASSWORD": "password",
        "EDGE_AGENT_MQTT_TLS_CA": "tls_ca"}


class CredentialsError(AgentError, ValueError):
    code_name = "usage"
    kind = "config"


@dataclass(frozen=True)
class BrokerCredentials:
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    device_id: str | None = None  # whose login it is, when the file says (the login JSON); never rendered

    def render(self) -> str:
        """The file's text (refuses values a line cannot hold)."""
        lines = ["# edgekit agent: MQTT broker login (keep this file 0600)"]
        for key, attr in KEYS.items():
            value = getattr(self, attr)
            if value is None:
                continue
            if "\n" in value or "\r" in value or "\0" in value:
                raise CredentialsError(f"{attr} must fit on one line")
            lines.append(f"{key}={value}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "BrokerCredentials":
        env = os.environ if env is None else env
        return cls(**{attr: env[key] for key, attr in KEYS.items() if env.get(key)})


def parse_credentials(text: str, where: str = "credentials") -> BrokerCredentials:
    if text.lstrip().startswith("{"):
        return _from_login_json(text, where)
    values: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in KEYS:
            raise CredentialsError(f"{where} line {n}: expected one of {', '.join(KEYS)}=VALUE")
        values[KEYS[key.strip()]] = value
    return BrokerCredentials(**values)


def _from_login_json(text: str, where: str) -> BrokerCredentials:
    """What `edge-fleet devices login ID --json` printed, as the docs hand it to the device (user name, password)."""
    try:
        login = json.loads(text)
        username, password = login["username"], login["password"]
        device_id = login.get("device_id")
        if not (isinstance(username, str) and isinstance(password, str) and isinstance(device_id, (str, type(None)))):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialsError(f"{where}: neither {', '.join(KEYS)}=VALUE lines nor the JSON `edge-fleet devices "
                               "login ID --json` prints") from None
    return BrokerCredentials(username, password, device_id=device_id)


def read_credentials(path: str | Path) -> BrokerCredentials:
    """The login in `path`; a one-line error when it is missing or malformed, a warning when others can read it."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as exc:
        raise CredentialsError(f"credentials file {p}: {exc.strerror or exc} (written by `edge-device setup`)") from None
    if stat.S_IMODE(mode) & 0o077:
        log.warning("credentials file %s can be read by other users: chmod 600 it", p)
    return parse_credentials(text, str(p))


def resolve_credentials(given: BrokerCredentials, path: str | Path | None,
                        env: dict[str, str] | None = None, device_id: str | None = None) -> BrokerCredentials:
    """Per field, the first set of: the command line, the credentials file, the environment. A file naming another
    device (the login JSON) is refused: two devices on one login knock each other off the broker."""
    from_file = read_credentials(path) if path else BrokerCredentials()
    if device_id and from_file.device_id and from_file.device_id != device_id:
        raise CredentialsError(f"{path} is the login of device {from_file.device_id!r}, not of {device_id!r}: give "
                               f"this device its own (edge-fleet devices login {device_id} --json)")
    sources = [given, from_file, BrokerCredentials.from_env(env)]
    return BrokerCredentials(**{attr: next((getattr(s, attr) for s in sources if getattr(s, attr) is not None), None)
                                for attr in KEYS.values()})
