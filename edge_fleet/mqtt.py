"""Connecting the fleet to an MQTT broker with paho-mqtt 2.x: URL(s), login, TLS client certificates.

Several URLs (the nodes of a clustered broker) are tried in order at start; afterwards paho's own
reconnects move to the next node when the connection is lost (edge_agent.ota.broker_failover, the
agent's rotation), so a fleet server outlives the node it was on."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from edge_agent.ota.broker_failover import BrokerRotation, first_that_answers
from edge_agent.ota.broker_url import BrokerAddress, parse_broker_urls

from .errors import ConnectionFailed

log = logging.getLogger(__name__)


@dataclass
class MqttSettings:
    """Where and how to connect. `url` is mqtt://[user:pass@]host[:port] or mqtts://... (TLS), or several
    of them separated by commas (the nodes of a clustered broker, tried in turn)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = "edge-fleet"
    keepalive: int = 30

    def addresses(self) -> list[BrokerAddress]:
        """Every broker URL parsed (ConnectionFailed with one line when one is bad or they mix TLS and plain)."""
        try:
            return parse_broker_urls(self.url, force_tls=self.ca_file is not None or self.cert_file is not None)
        except ValueError as exc:
            raise ConnectionFailed(str(exc)) from None

    def login_for(self, address: BrokerAddress) -> tuple[str | None, str | None]:
        """(user, password) for `address`: the explicit ones, else those in its URL."""
        return self.username or address.username, self.password or address.password


def set_nodelay(client: mqtt.Client) -> None:
    """Disable Nagle on the client's socket (call from on_connect): block requests are tiny."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def connect(settings: MqttSettings, client: mqtt.Client, timeout: float = 10.0) -> BrokerRotation:
    """Connect `client` to the first of the settings' brokers that accepts it, in order, and start its
    network loop in a background thread; the rotation returned says which broker is in use.

    Raises ConnectionFailed naming each broker and its reason (bad login, refused, unreachable) when none
    accepted. Afterwards the client reconnects by itself (paho's automatic reconnect with back-off), to the
    next broker when the connection to one is lost.
    """
    brokers = BrokerRotation(settings.addresses(), settings.login_for)
    if brokers.current.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                       certfile=str(settings.cert_file) if settings.cert_file else None,
                       keyfile=str(settings.key_file) if settings.key_file else None,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    _, _, failures = first_that_answers(
        brokers.addresses, lambda index, _a: _connect_once(client, brokers.use(client, index), settings.keepalive,
                                                           timeout),
        (ConnectionFailed,), lambda errors: ConnectionFailed("; ".join(str(e) for e in errors)))
    for earlier in failures:
        log.warning("%s; connected to the next broker, %s", earlier, brokers.url)
    _follow_on_failure(client, brokers)
    return brokers


def _connect_once(c: mqtt.Client, a: BrokerAddress, keepalive: int, timeout: float) -> None:
    """Connect to one broker and wait for its answer; ConnectionFailed (loop stopped) when it does not accept."""
    done = threading.Event()
    result: dict[str, object] = {}
    previous = c.on_connect

    def on_connect(cl: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        result.setdefault("rc", rc)
        done.set()
        if previous is not None:
            previous(cl, userdata, flags, rc, props)

    c.on_connect = on_connect
    try:
        try:
            c.connect(a.host, a.port, keepalive=keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"cannot reach MQTT broker {a.url}: {exc}") from exc
        c.loop_start()
        if not done.wait(timeout):
            c.loop_stop()
            raise ConnectionFailed(f"no answer from MQTT broker {a.url} within {timeout:.0f}s")
        rc = result["rc"]
        if getattr(rc, "is_failure", False):
            c.disconnect()
            c.loop_stop()
            raise ConnectionFailed(f"MQTT broker {a.url} refused the connection: {rc}")
    finally:
        c.on_connect = previous
    log.info("connected to MQTT broker %s%s", a.url, " (TLS)" if a.tls else "")


def _follow_on_failure(c: mqtt.Client, brokers: BrokerRotation) -> None:
    """Once connected: a lost or failed connection sends paho's next attempt to the next broker."""
    previous_disconnect, previous_fail = c.on_disconnect, c.on_connect_fail

    def on_disconnect(cl: mqtt.Client, userdata: object, flags: object, rc: mqtt.ReasonCode, props: object) -> None:
        if rc.is_failure:  # not our own disconnect()
            log.warning("lost the connection to MQTT broker %s (%s); reconnecting", brokers.url, rc)
            brokers.failed()
        if previous_disconnect is not None:
            previous_disconnect(cl, userdata, flags, rc, props)

    def on_connect_fail(cl: mqtt.Client, userdata: object) -> None:
        log.info("could not connect to MQTT broker %s", brokers.url)
        brokers.failed()
        if previous_fail is not None:
            previous_fail(cl, userdata)

    c.on_disconnect, c.on_connect_fail = on_disconnect, on_connect_fail
    c.on_pre_connect = brokers.on_pre_connect
