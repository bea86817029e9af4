"""Connecting the fleet to an MQTT broker with paho-mqtt 2.x: URL, login, TLS client certificates."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from edge_agent.ota.broker_url import parse_broker_url

from .errors import ConnectionFailed

log = logging.getLogger(__name__)


@dataclass
class MqttSettings:
    """Where and how to connect. `url` is mqtt://[user:pass@]host[:port] or mqtts://... (TLS)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = "edge-fleet"
    keepalive: int = 30

    def parsed(self) -> tuple[str, int, bool, str | None, str | None]:
        """(host, port, tls, username, password) from the URL and the explicit fields."""
        try:
            a = parse_broker_url(self.url, force_tls=self.ca_file is not None or self.cert_file is not None)
        except ValueError as exc:
            raise ConnectionFailed(str(exc)) from None
        return a.host, a.port, a.tls, self.username or a.username, self.password or a.password


def set_nodelay(client: mqtt.Client) -> None:
    """Disable Nagle on the client's socket (call from on_connect): block requests are tiny."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def connect(settings: MqttSettings, client: mqtt.Client | None = None, timeout: float = 10.0,
            will: tuple[str, bytes] | None = None) -> mqtt.Client:
    """A connected paho client with its network loop running in a background thread.

    Raises ConnectionFailed with the broker's reason (bad login, refused, unreachable).
    The client reconnects by itself afterwards (paho's automatic reconnect with back-off).
    """
    host, port, tls, user, password = settings.parsed()
    c = client or mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                              protocol=mqtt.MQTTv311, clean_session=True)
    if user is not None:
        c.username_pw_set(user, password)
    if tls:
        c.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                  certfile=str(settings.cert_file) if settings.cert_file else None,
                  keyfile=str(settings.key_file) if settings.key_file else None,
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will is not None:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.reconnect_delay_set(min_delay=1, max_delay=10)
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
        c.connect(host, port, keepalive=settings.keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc
    c.loop_start()
    if not done.wait(timeout):
        c.loop_stop()
        raise ConnectionFailed(f"no answer from MQTT broker {host}:{port} within {timeout:.0f}s")
    rc = result["rc"]
    if getattr(rc, "is_failure", False):
        c.disconnect()
        c.loop_stop()
        raise ConnectionFailed(f"MQTT broker {host}:{port} refused the connection: {rc}")
    c.on_connect = previous
    log.info("connected to MQTT broker %s:%d%s", host, port, " (TLS)" if tls else "")
    return c
