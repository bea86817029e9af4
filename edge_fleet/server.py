"""The fleet server process: broker connection (or embedded broker), registry updates,
block server and the rollout driver.

Without a broker URL it starts the embedded broker itself (edge_fleet.broker.start_broker:
a managed Mosquitto child when the binary is installed, else in-process amqtt) and stops it
on exit. The embedded broker requires logins (edge_fleet.broker.logins: generated on the first
start, one per device with `add_device`/`edge-fleet devices login ID`) and, on Mosquitto, the
fleet's ACL (devices read only their desired/blocks topics, client id = user name); a changed
logins file is picked up while running. With a broker URL, `broker` is an ExternalBroker handle, so both cases look the same.
Several broker URLs (the nodes of a clustered broker) are tried in order; when the node in use dies the
server reconnects to the next one (edge_fleet.mqtt.connect), subscribes again there and goes on driving
its rollouts: they live in the registry, not in the connection. It
subscribes to the reported/presence/telemetry topics of all devices and records them in the
registry, answers block requests, and drives pending/running rollouts that the
`edge-fleet deploy` command stored in the registry.

Several servers on one registry (PostgreSQL) and one broker act as one fleet (docs/fleet.md):
with `share_group` each subscribes through MQTT shared subscriptions (`$share/GROUP/...`), so
the broker hands each device message to one of them; a plain subscription to the retained
reported states for the first seconds catches up on what happened while no server ran (a
report recorded twice changes nothing). Only the holder of the registry's "rollouts" lease
drives rollouts; it renews the lease every tick, and when it dies another server takes the
lease over once it runs out (`lease_ttl`) and continues from the registry.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Literal, Sequence

import paho.mqtt.client as mqtt

from edge_agent.ota.broker_failover import BrokerRotation
from edge_agent.ota.heap import keep_freed_memory
from edge_agent.ota.broker_url import split_broker_urls
from edge_agent.ota.protocol import DEFAULT_PREFIX, Presence, ProtocolError, ReportedState, Telemetry, Topics

from .block_server import BlockLimits, BlockServer
from .broker import Broker, BrokerStartError, ExternalBroker, find_mosquitto, start_broker
from .broker.logins import FLEET_USER, BrokerLogins
from .broker.mosquitto_config import render_acl
from .mqtt import MqttSettings, connect, set_nodelay
from .registry import Registry
from .report_inbox import ReportInbox
from .rollout import RolloutDriver
from .rollout.signed_urls import UrlSigner

log = logging.getLogger(__name__)

LEASE = "rollouts"  # the registry lease whose holder drives rollouts
LEASE_TTL = 10.0  # seconds: a dead driver's rollouts wait at most this long for another server
CATCH_UP_S = 3.0  # how long a server in a share group also reads retained reported states


class FleetServer:
    """Start with `start()`, stop with `stop()`; or use as a context manager. `url` is the broker URL(s) given
    (or the embedded broker's), `broker_in_use` the one connected to now. `broker_url`: one URL, a comma
    list or a sequence of them; None starts the embedded broker."""

    def __init__(self, registry: Registry, broker_url: str | Sequence[str] | None = None, *,
                 prefix: str = DEFAULT_PREFIX,
                 broker_dir: Path | None = None, embedded: Literal["mosquitto", "amqtt"] = "mosquitto",
                 settings: MqttSettings | None = None, limits: BlockLimits | None = None,
                 tick: float = 0.2, listen: tuple[str, int | None] = ("127.0.0.1", None),
                 anonymous: bool = False, share_group: str | None = None, lease_ttl: float = LEASE_TTL,
                 signer: UrlSigner | None = None) -> None:
        self.registry = registry
        self.topics = Topics(prefix)
        self.broker_url = ",".join(split_broker_urls(broker_url)) or None
        self.broker_dir = broker_dir or registry.store_dir.parent / "broker"
        self.embedded = embedded
        self.listen = listen  # where an embedded broker listens (port None: a free one)
        self.settings = settings
        self.limits = limits
        self.tick = tick
        self.anonymous = anonymous  # embedded broker without logins or ACL (local experiments only)
        self.logins: BrokerLogins | None = None
        self.logins_created = False  # this start generated the logins (shown to the operator)
        self._logins_mtime = 0.0
        self.share_group = share_group
        self.signer = signer
        self.lease_ttl = lease_ttl
        self.server_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.leading = False  # holds the rollouts lease now
        self.broker: Broker | None = None
        self.client: mqtt.Client | None = None
        self.brokers: BrokerRotation | None = None  # which broker of the URLs is in use
        self.blocks: BlockServer | None = None
        self.driver: RolloutDriver | None = None
        self._stop = threading.Event()
        self._missed = threading.Event()  # a message could not be stored (registry away)
        self.inbox = ReportInbox(self.topics.parse)  # device messages to store (bounded: report_inbox.py)
        self._writer: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._dir_lock: int | None = None  # fd holding broker_dir's lock while our embedded broker runs
        self._sizes: dict[str, tuple[Path, int] | None] = {}

    @property
    def url(self) -> str:
        assert self.settings is not None, "server not started"
        return self.settings.url

    @property
    def broker_in_use(self) -> str:
        """The broker connected to (or being tried) now, without its login."""
        assert self.brokers is not None, "server not started"
        return self.brokers.url

    def start(self) -> "FleetServer":
        """Start (or connect to) the broker, subscribe, and run the rollout loop in a thread."""
        self.settings = self.settings or MqttSettings(url="")
        if self.broker_url is None:
            try:
                self.broker = self._start_embedded()
            except BaseException:
                self.stop()  # releases the HOME's lock
                raise
        else:
            self.broker = ExternalBroker(self.broker_url).start()
        self.settings.url = self.broker.url
        keep_freed_memory()  # every block frame sent is a buffer of its own: no fresh pages for each one
        try:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.settings.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=True)
            client.on_connect = self._on_connect
            # block frames to every device share this one connection: paho's default of 20 unacknowledged
            # QoS 1 messages (2.5 MiB of 128 KiB blocks) per broker round trip capped a single download
            client.max_inflight_messages_set(256)
            self._writer = threading.Thread(target=self._write_loop, name="registry-writer", daemon=True)
            self._writer.start()
            client.on_message = self._on_message
            self.client = client
            self.blocks = BlockServer(client, self.topics, self._lookup, self.limits)
            self.blocks.start()
            self.brokers = connect(self.settings, client)
        except BaseException:
            self.stop()
            raise
        self.driver = RolloutDriver(self.registry, self.topics, self._publish, self.signer)
        self._thread = threading.Thread(target=self._loop, name="rollouts", daemon=True)
        self._thread.start()
        log.info("fleet server running on %s (prefix %s)", self.broker_in_use, self.topics.prefix)
        return self

    def _lock_broker_dir(self) -> None:
        """One embedded broker per HOME: a second `edge-fleet serve` on it started another broker on the same
        config, persistence and logins (a second port devices knew nothing of) instead of saying so."""
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.broker_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BrokerStartError(f"another edge-fleet serve (pid {holder}) runs the embedded broker of "
                                   f"{self.broker_dir.parent}: stop it first, or give this one its own --home") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._dir_lock = fd

    def _start_embedded(self) -> Broker:
        self._lock_broker_dir()
        host, port = self.listen
        if self.anonymous:
            log.warning("embedded broker without logins: any local client may read and write every topic")
            return start_broker(self.broker_dir, host=host, port=port, prefer=self.embedded)
        self.logins, self.logins_created = BrokerLogins.load_or_create(self.broker_dir)
        self._logins_mtime = self.logins.path.stat().st_mtime
        acl = None
        if self.embedded == "mosquitto" and find_mosquitto() is not None:
            acl = self.broker_dir / "acl.conf"
            acl.write_text(render_acl(self.topics.prefix, FLEET_USER))
        assert self.settings is not None
        if self.settings.username is None:
            self.settings.username, self.settings.password = FLEET_USER, self.logins.fleet_password
        broker = start_broker(self.broker_dir, host=host, port=port, prefer=self.embedded,
                              users=self.logins.users(), acl_file=acl)
        if acl is None:  # said once the broker runs, so a failed start stays one line
            log.info("the amqtt broker cannot enforce the fleet's ACL: devices log in but are not confined "
                     "to their own topics (install mosquitto)")
        return broker

    def add_device(self, device_id: str) -> tuple[str, str]:
        """(user name, password) a device logs in to the embedded broker with (registered on first use)."""
        if self.logins is None:
            raise RuntimeError("device logins exist only for an embedded broker started with logins")
        # the file, not our copy: `edge-fleet devices revoke` may have changed it since the last tick
        self.logins, _ = BrokerLogins.load_or_create(self.logins.path.parent)
        password = self.logins.add_device(device_id)
        self._reload_logins(force=True)
        return device_id, password

    def _reload_logins(self, force: bool = False) -> None:
        """Give the running broker the logins file's content when it changed (`edge-fleet devices login`,
        `login --rotate`, `revoke`). On Mosquitto this also ends a revoked device's connection: see reload_users."""
        if self.logins is None or self.broker is None:
            return
        try:
            mtime = self.logins.path.stat().st_mtime
            if not force and mtime == self._logins_mtime:
                return
            self.logins, _ = BrokerLogins.load_or_create(self.logins.path.parent)
            self._logins_mtime = mtime
            self.broker.reload_users(self.logins.users())
            log.info("broker logins reloaded (%d devices)", len(self.logins.devices))
        except (OSError, ValueError, KeyError, NotImplementedError, BrokerStartError) as exc:  # damaged: keep the old
            log.warning("could not reload the broker logins: %s", exc)

    def stop(self) -> None:
        """Stop the loop, disconnect, and stop the embedded broker if we started one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self.leading:
            try:
                self.registry.release_lease(LEASE, self.server_id)  # the next server takes over at once
            except Exception:  # noqa: BLE001 - the lease runs out by itself
                log.warning("could not release the rollouts lease; another server takes over in %.0f s",
                            self.lease_ttl)
            self.leading = False
        if self.blocks is not None:
            self.blocks.stop()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
        if self._writer is not None:
            self.inbox.close()  # after what is queued: nothing received is lost on a clean stop
            self._writer.join(30)
            self._writer = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._dir_lock is not None:
            os.close(self._dir_lock)  # closing the fd releases its lock
            self._dir_lock = None

    def __enter__(self) -> "FleetServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Ask wait() to return (safe from a signal handler); then call stop()."""
        self._stop.set()

    def wait(self) -> None:
        """Block until request_stop() or stop() is called."""
        while not self._stop.wait(1.0):
            pass

    # -- internals --------------------------------------------------------------------------

    def _lookup(self, sha256: str) -> tuple[Path, int] | None:
        if sha256 not in self._sizes or self._sizes[sha256] is None:
            rec = self.registry.bundle_by_sha(sha256)
            self._sizes[sha256] = (rec.path, rec.size) if rec and rec.path.is_file() else None
        return self._sizes[sha256]

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s queued while disconnected (rc=%s)", topic, info.rc)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        set_nodelay(client)
        if self.brokers is not None:  # None during the first connect: connect() says where
            log.info("connected to %s: subscribing", self.brokers.url)
        topics = [(self.topics.all_reported(), 1), (self.topics.all_presence(), 1),
                  (self.topics.all_telemetry(), 0), (self.topics.all_block_requests(), 1)]
        if self.share_group is None:
            client.subscribe(topics)
            return
        client.subscribe([(f"$share/{self.share_group}/{topic}", qos) for topic, qos in topics])
        self._catch_up()  # brokers send no retained messages to shared subscriptions

    def _catch_up(self) -> None:
        """Read every device's retained reported state again (at start in a share group, and after
        the registry was away: reports that arrived meanwhile could not be stored)."""
        client = self.client
        if client is None:
            return
        client.subscribe(self.topics.all_reported(), 1)  # (re)subscribing makes the broker resend retained ones
        if self.share_group is not None:
            timer = threading.Timer(CATCH_UP_S, lambda: client.unsubscribe(self.topics.all_reported()))
            timer.daemon = True
            timer.start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        """Block requests go to the block server; reports to the registry writer's inbox, so a slow
        database never slows the MQTT loop (a broker drops QoS 1 messages for a client that lags:
        see max_queued_messages in broker/mosquitto_config.py). The inbox is bounded: progress
        reports and telemetry are merged or dropped when the writer lags, phase changes never."""
        if msg.topic.endswith("/blocks/get"):
            try:
                assert self.blocks is not None
                self.blocks.handle(msg)
            except Exception:  # noqa: BLE001 - never let one message kill the network thread
                log.exception("failed to handle message on %s", msg.topic)
        else:
            self.inbox.put(msg.topic, msg.payload)

    def _write_loop(self) -> None:
        while (item := self.inbox.get()) is not None:
            self._record(*item)

    def _record(self, topic: str, payload: bytes) -> None:
        """Store one device message in the registry."""
        try:
            device_id, kind = self.topics.parse(topic)
            if kind == "reported":
                if not payload:
                    return  # a cleared retained message
                state = ReportedState.parse(payload)
                if state.device_id != device_id:
                    raise ProtocolError(f"reported state of {state.device_id!r} on {device_id!r}'s topic")
                self.registry.record_reported(state)
            elif kind == "presence":
                if payload:
                    self.registry.record_presence(device_id, Presence.parse(payload).state)
            elif kind == "telemetry":
                self.registry.record_telemetry(device_id, Telemetry.parse(payload))
            else:
                raise ProtocolError(f"unexpected {kind} message on {topic}")
        except ProtocolError as exc:
            log.warning("ignored message on %s: %s", topic, exc)
        except self.registry.UNAVAILABLE as exc:
            if self._missed.is_set():
                return  # the registry is away: said once
            self._missed.set()  # read the retained reports again once the registry answers
            log.warning("failed to handle message on %s: %s", topic, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        except Exception:  # noqa: BLE001 - never let one message stop the writer
            # a bug or data the registry refuses: it was taken for "registry away" (its traceback hidden, and the
            # same message refused again at every catch-up); the registry is fine, so only this message is lost
            log.exception("failed to store the message on %s (dropped)", topic)

    def _loop(self) -> None:
        assert self.driver is not None
        while not self._stop.wait(self.tick):
            self._reload_logins()
            try:
                leading = self.registry.acquire_lease(LEASE, self.server_id, self.lease_ttl)
            except Exception as exc:  # noqa: BLE001 - registry away: rollouts wait, devices keep their models
                if self.leading:
                    log.warning("registry unavailable (%s): rollouts wait until it is back", exc)
                self.leading = False
                continue
            if self._missed.is_set():
                log.info("registry answers again: reading the devices' retained reports")
                self._missed.clear()
                self._catch_up()
            if leading != self.leading:
                log.info("server %s %s", self.server_id, "now drives the rollouts" if leading
                         else "no longer drives the rollouts (another server holds the lease)")
                self.leading = leading
            if leading:
                self.driver.step()


def run_server(registry: Registry, broker_url: str | None, **kwargs: object) -> FleetServer:
    """Convenience for scripts: a started FleetServer."""
    return FleetServer(registry, broker_url, **kwargs).start()  # type: ignore[arg-type]


__all__ = ["FleetServer", "run_server"]
