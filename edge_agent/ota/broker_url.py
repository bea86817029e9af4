"""The one parser of MQTT broker URLs, shared by the agent, its telemetry and the fleet.

`mqtt://[user:pass@]host[:port]` (plain, default port 1883) or `mqtts://...` (TLS, 8883); `tcp://`
and `ssl://` are accepted as the aliases paho and Mosquitto users know. User and password in the URL
are percent-decoded. Several URLs (the nodes of a clustered broker) are given as a comma list, a
repeated flag, or both (`split_broker_urls`); `parse_broker_urls` checks them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urlparse, urlsplit

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port` (or mqtts://), without the login: safe to print."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str, force_tls: bool = False) -> BrokerAddress:
    """`url` as a BrokerAddress; ValueError with one line when it is not an MQTT URL with a host.

    force_tls: TLS settings were given (a CA or client certificate), so a plain `mqtt://` URL gets TLS too.
    """
    try:
        u = urlparse(url)
        port = u.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"broker URL {redact_broker_urls(url)!r} is malformed: {exc}") from None
    if u.scheme not in PLAIN_SCHEMES + TLS_SCHEMES or not u.hostname:  # the message is printed: never the password
        raise ValueError(f"broker URL {redact_broker_urls(url)!r} must look like mqtt://host:1883 or mqtts://host:8883")
    tls = u.scheme in TLS_SCHEMES or force_tls
    return BrokerAddress(u.hostname, port or (8883 if tls else 1883), tls,
                         unquote(u.username) if u.username else None, unquote(u.password) if u.password else None)


def split_broker_urls(values: str | Iterable[str] | None) -> list[str]:
    """The broker URLs in the order given: one string or several (a repeated flag), each a comma list."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [u.strip() for value in values for u in value.split(",") if u.strip()]


def parse_broker_urls(values: str | Iterable[str] | None, force_tls: bool = False) -> list[BrokerAddress]:
    """Every URL of `values` parsed (split_broker_urls); ValueError with one line when there is none, one is
    bad, or they mix TLS and plain (a client's TLS settings are made once, for all of them)."""
    urls = split_broker_urls(values)
    if not urls:
        raise ValueError("no broker URL given")
    addresses = [parse_broker_url(u, force_tls=force_tls) for u in urls]
    if len({a.tls for a in addresses}) > 1:
        raise ValueError("the broker URLs mix mqtt:// and mqtts://: use TLS for all of them or for none")
    return addresses


def redact_broker_urls(values: str | Iterable[str] | None) -> str:
    """The broker URLs as given (comma list), each password replaced by `***`: what a program may print or
    put in its JSON output (a password in `mqtt://user:pass@host` must not reach a log or a terminal)."""
    out = []
    for url in split_broker_urls(values):
        try:
            u = urlsplit(url)
            password = u.password
        except ValueError:  # not parsable: it cannot be shown safely either way, so show no login at all
            out.append(url.rpartition("@")[2])
            continue
        if password is None:
            out.append(url)
            continue
        login, _, host = u.netloc.rpartition("@")
        user = login.split(":", 1)[0]
        out.append(u._replace(netloc=f"{user}:***@{host}").geturl())
    return ",".join(out)
