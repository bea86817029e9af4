"""The agent's one MQTT connection: connect and reconnect, presence with a last will, routing by topic.

With several broker URLs (the nodes of a clustered broker) a lost or refused connection moves on to
the next URL, and after the last one back to the first: when a node dies the agent reconnects to
another node, and comes back when that one dies in turn. Nothing else changes on a switch: the
subscriptions and the presence are made again on every connect, and the fleet resends the desired
state of a device whose update is in flight when it sees it come online (retained messages do not
cross nodes on every cluster).

paho's network thread runs the callbacks here; a handler only parses, checks and hands over.
A handler drops a message by raising MessageIgnored (logged and counted) or by returning
False (counted; whoever refused it logged why). No message ever takes the agent down.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import paho.mqtt.client as mqtt

from ..job import one_line
from ..protocol import Presence, Topics, dumps
from ..broker_failover import BrokerRotation
from ..broker_url import BrokerAddress
from ..heap import keep_freed_memory
from . import paho_decode
from .config import AgentConfig

log = logging.getLogger(__name__)

Handler = Callable[[bytes | memoryview], Optional[bool]]  # memoryview: routes with zero_copy


def make_client(c: AgentConfig, address: BrokerAddress) -> mqtt.Client:
    """A paho client with the agent's client id, the login for `address` and the TLS settings (not
    connected; TLS is all or none across the brokers)."""
    paho_decode.install()  # block frames: no copy of the payload (paho makes three)
    keep_freed_memory()  # and no fresh pages for each packet's buffers (heap.py)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgekit-agent-{c.device_id}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    username, password = c.login_for(address)
    if username is not None:
        client.username_pw_set(username, password)
    if address.tls:
        client.tls_set(ca_certs=c.tls_ca, certfile=c.tls_cert, keyfile=c.tls_key, cert_reqs=ssl.CERT_REQUIRED)
    return client


def refusal_line(c: AgentConfig, reason_code: object, address: BrokerAddress) -> str:
    """What to say when the broker at `address` (the one tried, of several maybe) refuses the agent: which
    login, and where a right one comes from."""
    user = c.login_for(address)[0]
    who = f"the login of user {user!r}" if user else "an anonymous login"
    return (f"the broker {address.url} refused {who} ({reason_code}): check the credentials file or give the device "
            f"its login again (`edge-fleet devices login {c.device_id}`)")


class MessageIgnored(Exception):
    """A message the agent drops; the text says why (one line)."""


@dataclass(frozen=True)
class DeviceTopics:
    """This device's topics (see edge_agent.ota.protocol)."""

    desired: str
    reported: str
    presence: str
    telemetry: str
    block_request: str
    block_data: str

    @classmethod
    def for_device(cls, topics: Topics, device_id: str) -> "DeviceTopics":
        return cls(topics.desired(device_id), topics.reported(device_id), topics.presence(device_id),
                   topics.telemetry(device_id), topics.block_request(device_id), topics.block_data(device_id))


class MqttLink:
    """Connects to the broker, subscribes the routed topics, publishes; `connected` is set while up."""

    def __init__(self, config: AgentConfig, topics: DeviceTopics) -> None:
        self.config, self.topics = config, topics
        self.connected = threading.Event()
        self.ignored_messages = 0
        self._routes: dict[str, Handler] = {}
        self._zero_copy: list[str] = []
        self._on_connected: list[Callable[[], None]] = []
        self._stopping = False
        self.brokers = BrokerRotation(config.broker_addresses(), config.login_for)  # the broker in use, the next
        self.client = self._make_client()

    def route(self, topic: str, handler: Handler, zero_copy: bool = False) -> None:
        """Subscribe `topic` (QoS 1) on every connect and hand its messages to `handler`; zero_copy: as a
        read-only memoryview of the packet, not a copy (block frames; paho_decode.zero_copy)."""
        self._routes[topic] = handler
        if zero_copy:
            paho_decode.zero_copy(topic)
            self._zero_copy.append(topic)

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Run `callback` after every (re)connect, once subscribed and announced online."""
        self._on_connected.append(callback)

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.config, self.brokers.current)
        client.will_set(self.topics.presence, dumps(Presence("offline")), qos=1, retain=True)
        client.reconnect_delay_set(0.2, 5)
        client.max_inflight_messages_set(64)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self.brokers.on_pre_connect
        return client

    @property
    def broker_url(self) -> str:
        """The broker URL in use (or being tried), without its password."""
        return self.brokers.url

    def _next_broker(self) -> None:
        """Move on to the next broker URL at paho's next (re)connect attempt."""
        if not self._stopping:
            self.brokers.failed()

    def start(self) -> None:
        a = self.brokers.current
        self.client.connect_async(a.host, a.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("%s; retrying", refusal_line(self.config, reason_code, self.brokers.current))
            return
        client.subscribe([(topic, 1) for topic in self._routes])
        client.publish(self.topics.presence, dumps(Presence("online")), qos=1, retain=True)
        self.connected.set()
        for callback in self._on_connected:
            callback()
        log.info("connected to %s as %s", self.broker_url, self.config.device_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connected.clear()
        if not self._stopping:
            log.warning("disconnected from %s (%s); reconnecting", self.broker_url, reason_code)
            self._next_broker()

    def _on_connect_fail(self, client, userdata) -> None:  # noqa: ANN001
        log.info("could not connect to %s", self.broker_url)
        self._next_broker()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        handler = self._routes.get(msg.topic)
        try:
            if handler is None:  # some brokers deliver retained messages to non-matching subscriptions
                raise MessageIgnored(f"message on foreign topic {msg.topic!r}")
            if handler(msg.payload) is False:
                self.ignored_messages += 1
        except MessageIgnored as why:
            self.ignore(str(why))
        except Exception as exc:  # noqa: BLE001 - a message never takes the agent down
            self.ignore(f"message on {msg.topic!r} could not be handled: {one_line(exc)}")

    def ignore(self, why: str) -> None:
        self.ignored_messages += 1
        log.warning("ignored %s", why)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def stop(self) -> None:
        """Say offline (retained, as the last will would), then disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.topics.presence, dumps(Presence("offline")), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        for topic in self._zero_copy:  # another client of this process on the topic gets bytes again
            paho_decode.zero_copy(topic, on=False)
