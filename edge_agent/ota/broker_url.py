"""The one parser of MQTT broker URLs, shared by the agent, its telemetry and the fleet.

`mqtt://[user:pass@]host[:port]` (plain, default port 1883) or `mqtts://...` (TLS, 8883); `tcp://`
and `ssl://` are accepted as the aliases paho and Mosquitto users know. User and password in the URL
are percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str, force_tls: bool = False) -> BrokerAddress:
    """`url` as a BrokerAddress; ValueError with one line when it is not an MQTT URL with a host.

    force_tls: TLS settings were given (a CA or client certificate), so a plain `mqtt://` URL gets TLS too.
    """
    try:
        u = urlparse(url)
        port = u.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"broker URL {url!r} is malformed: {exc}") from None
    if u.scheme not in PLAIN_SCHEMES + TLS_SCHEMES or not u.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    tls = u.scheme in TLS_SCHEMES or force_tls
    return BrokerAddress(u.hostname, port or (8883 if tls else 1883), tls,
                         unquote(u.username) if u.username else None, unquote(u.password) if u.password else None)
