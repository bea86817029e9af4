"""`start_broker()`: pick the managed broker kind that is installed and start it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from ..errors import BrokerUnavailable
from . import amqtt, mosquitto
from .base import START_TIMEOUT_S, Broker, free_port
from .mosquitto_config import TlsListener, max_packet_size

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]

LAST_PORT = "port"  # in data_dir: the port its broker had last, taken again when no port is given
UNAVAILABLE_MSG = "no MQTT broker available: install mosquitto (apt-get install mosquitto) or pip install amqtt"


def start_broker(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefer: BrokerKind = "mosquitto",
    username: str | None = None,
    password: str | None = None,
    max_message_mb: float | None = None,
    *,
    users: Mapping[str, str] | None = None,
    acl_file: Path | None = None,
    fallback: bool = True,
    start_timeout: float = START_TIMEOUT_S,
    tls: TlsListener | None = None,
) -> Broker:
    """Start an MQTT broker listening on ``host:port`` and return its handle.

    Args:
        data_dir: directory for the config, password file, log and persistence data
            (created if missing). Reuse it to keep retained messages / sessions.
        host: address to bind (only this address is listened on).
        port: TCP port; None (or 0) picks a free one.
        prefer: "mosquitto" (child process) or "amqtt" (in-process thread).
        username, password: if given, anonymous access is disabled and this
            user must authenticate. Shortcut for ``users={username: password}``.
        max_message_mb: largest accepted message payload in MiB (mosquitto only).
        users: further ``{username: password}`` credentials (e.g. fleet + devices).
        acl_file: Mosquitto ACL file (see examples/mosquitto/acl.conf); mosquitto only,
            a broker that cannot enforce it is never substituted.
        fallback: if the preferred kind is not installed, use the other one.
        start_timeout: seconds to wait for the listener to accept connections.
        tls: serve MQTT over TLS (mosquitto only), optionally requiring client certificates.

    Raises:
        BrokerUnavailable: no usable broker is installed.
        BrokerStartError: the broker did not come up (message: one line; detail: its log tail).
    """
    if (username is None) != (password is None):
        raise ValueError("username and password must be given together")
    creds: dict[str, str] = dict(users or {})
    if username is not None and password is not None:
        creds[username] = password
    if max_message_mb is not None:
        max_packet_size(max_message_mb)  # ValueError when out of range, whichever kind runs
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for kind in _candidates(prefer, fallback, needs_mosquitto=acl_file is not None or tls is not None):
        broker = _installed(kind, data_dir, host, port or _last_or_free_port(data_dir, host), creds, max_message_mb,
                            acl_file, start_timeout, tls)
        if broker is None:
            log.info("%s broker not installed", kind)
            continue
        broker.start()
        try:  # the running broker matters more than remembering its port (a full disk must not orphan it)
            (data_dir / LAST_PORT).write_text(f"{broker.port}\n")
        except OSError as exc:
            log.warning("could not record the broker's port in %s: %s", data_dir, exc)
        log.info("started %s broker at %s (data_dir=%s)", kind, broker.url, data_dir)
        return broker
    if acl_file is not None or tls is not None:
        raise BrokerUnavailable("ACLs and TLS need mosquitto: install it (apt-get install mosquitto)")
    raise BrokerUnavailable(UNAVAILABLE_MSG)


def _installed(kind: BrokerKind, data_dir: Path, host: str, port: int, creds: dict[str, str],
               max_message_mb: float | None, acl_file: Path | None, start_timeout: float,
               tls: TlsListener | None) -> Broker | None:
    """A (not yet started) broker of `kind`, or None when it is not installed."""
    if kind == "mosquitto":
        binary = mosquitto.find_mosquitto()
        if binary is None:
            return None
        return mosquitto.MosquittoBroker(binary, data_dir, host, port, creds, max_message_mb, acl_file,
                                         start_timeout, tls)
    if not amqtt.amqtt_available():
        return None
    if max_message_mb is not None:
        log.warning("amqtt broker does not enforce max_message_mb=%s", max_message_mb)
    return amqtt.AmqttBroker(data_dir, host, port, creds, start_timeout)


def _candidates(prefer: BrokerKind, fallback: bool, needs_mosquitto: bool) -> list[BrokerKind]:
    """Kinds to try in order; never silently drop access control or TLS."""
    order: list[BrokerKind] = ["mosquitto", "amqtt"] if prefer == "mosquitto" else ["amqtt", "mosquitto"]
    if not fallback:
        order = order[:1]
    if needs_mosquitto:
        order = [k for k in order if k == "mosquitto"]
        if not order:
            raise ValueError("acl_file and tls are only supported by the mosquitto broker")
    return order


def _last_or_free_port(data_dir: Path, host: str) -> int:
    """The port this data_dir's broker had last time if it is free again, else any free one: devices were given
    the broker's URL, and a restarted `edge-fleet serve` without --listen moved it and lost every device."""
    try:
        last = int((data_dir / LAST_PORT).read_text())
        if not 1 <= last <= 65535:  # a damaged file: port 0 would be any port, i.e. a new one each start
            return free_port(host)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the brokers bind their listener
            s.bind((host, last))
        return last
    except (OSError, ValueError, OverflowError):
        return free_port(host)
