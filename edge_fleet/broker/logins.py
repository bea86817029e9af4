"""The embedded broker's logins: generated on its first start, kept in `<broker dir>/logins.json` (0600).

An embedded broker never accepts anonymous clients. The fleet server logs in as `fleet`; each
device logs in with its device id as user name and a password the fleet generates once
(`edge-fleet devices add ID`), so the broker ACL (`mosquitto_config.render_acl`) can confine it
to its own topics and bind its client id to its user name. The passwords are kept in clear
because the broker's password file is regenerated from them on every start; the file is
readable by its owner only.

A revoked device (`edge-fleet devices revoke ID`) loses its password and is listed under `revoked`
with the time, so `devices list` can say why it no longer connects; `devices login ID` gives it a
new login again (an operator's explicit decision).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.ota.protocol import check_device_id

from ..errors import BrokerStartError

FLEET_USER = "fleet"
LOGINS_NAME = "logins.json"


@dataclass
class BrokerLogins:
    """Who may log in to the embedded broker: the fleet server and each registered device."""

    path: Path
    fleet_password: str
    devices: dict[str, str] = field(default_factory=dict)
    revoked: dict[str, float] = field(default_factory=dict)  # device id -> when its login was revoked (epoch s)

    @classmethod
    def load_or_create(cls, folder: Path) -> tuple["BrokerLogins", bool]:
        """The logins kept in `folder` (created with a new fleet password the first time; True then)."""
        path = Path(folder) / LOGINS_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                return cls(path, str(data["fleet_password"]), {str(k): str(v) for k, v in data["devices"].items()},
                           {str(k): float(v) for k, v in data.get("revoked", {}).items()}), False
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # an edit by hand, a truncated copy
                # was `'fleet_password'` or `Expecting property name ...`, exit 1, for serve and devices login alike
                what = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
                raise BrokerStartError(f"broker logins {path} are damaged ({what}): restore the file, or move it "
                                       "away to generate new ones (each device then needs `edge-fleet devices "
                                       "login ID` again)") from None
        logins = cls(path, secrets.token_urlsafe(24))
        logins.save()
        return logins, True

    def users(self) -> dict[str, str]:
        """{user name: password} for the broker's password file."""
        return {FLEET_USER: self.fleet_password, **self.devices}

    def add_device(self, device_id: str) -> str:
        """The device's password (a new one the first time; stored)."""
        check_device_id(device_id)
        if device_id == FLEET_USER:
            raise ValueError(f"device id {FLEET_USER!r} is the fleet server's own login")
        if device_id not in self.devices:
            self.devices[device_id] = secrets.token_urlsafe(18)
            self.revoked.pop(device_id, None)
            self.save()
        return self.devices[device_id]

    def rotate(self, device_id: str) -> str:
        """A new password for a device that has a login (KeyError if it has none): the old one stops working."""
        if device_id not in self.devices:
            raise KeyError(device_id)
        self.devices[device_id] = secrets.token_urlsafe(18)
        self.save()
        return self.devices[device_id]

    def revoke(self, device_id: str) -> None:
        """Take the device's login away (KeyError if it has none); remembered as revoked now."""
        if device_id not in self.devices:
            raise KeyError(device_id)
        del self.devices[device_id]
        self.revoked[device_id] = time.time()
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"fleet_password": self.fleet_password, "devices": self.devices, "revoked": self.revoked},
                      fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
