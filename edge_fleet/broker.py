"""Managed MQTT broker for the edgekit fleet server.

``start_broker()`` runs a local Mosquitto 2.x as a child process (preferred: fast,
persistent, ACLs) or, when no ``mosquitto`` binary is installed, the pure-Python
``amqtt`` broker in a background thread of this process. Both are exposed through
the same small :class:`Broker` handle (``url``, ``stop()``, ``restart()``, context
manager).

Notes on the amqtt fallback (amqtt==0.12.1):
  * only retained messages survive ``restart()`` (we snapshot them to a JSON file
    in ``data_dir``); persistent sessions / queued QoS>0 messages do not;
  * ACL files and ``max_message_mb`` are not supported/enforced;
  * it PUBACKs a QoS1 publish before routing it (stop() waits briefly for queued
    messages to settle);
  * it was reported delivering retained messages to non-matching subscriptions,
    so clients should check ``msg.topic`` themselves.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import ctypes
import hmac
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

log = logging.getLogger(__name__)

__all__ = ["Broker", "BrokerUnavailable", "BrokerStartError", "TlsListener", "find_mosquitto", "start_broker"]

BrokerKind = Literal["mosquitto", "amqtt"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# MQTT's largest encodable packet (remaining length 268435455 + fixed header).
_MQTT_MAX_PACKET = 268_435_455
# Room for fixed header, topic (<= 65535 bytes) and properties on top of the payload.
_PACKET_OVERHEAD = 70_000

_UNAVAILABLE_MSG = (
    "no MQTT broker available: install mosquitto (apt-get install mosquitto) or pip install amqtt"
)


class BrokerUnavailable(RuntimeError):
    """No usable broker implementation is installed."""


class BrokerStartError(RuntimeError):
    """A broker was found but failed to start (message includes its log tail)."""


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None if it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_mosquitto_passwd(mosquitto: str) -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for d in (Path(mosquitto).parent, Path("/usr/bin"), Path("/usr/local/bin")):
        if os.access(d / "mosquitto_passwd", os.X_OK):
            return str(d / "mosquitto_passwd")
    return None


def _amqtt_available() -> bool:
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when its parent dies (best effort)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux / no libc: nothing we can do
        pass


@dataclass(frozen=True)
class TlsListener:
    """TLS for the Mosquitto listener: server certificate, and the CA that signs client certificates.

    With `require_certificate`, clients must present a certificate signed by `cafile`
    (TLS client authentication), on top of any username/password.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True


@dataclass(eq=False)
class Broker:
    """Handle on a running broker. Use :func:`start_broker` to create one."""

    kind: BrokerKind
    host: str
    port: int
    data_dir: Path
    _impl: _Mosquitto | _Amqtt = field(repr=False)
    tls: bool = False

    @property
    def url(self) -> str:
        """``mqtt://host:port`` URL of the listener (``mqtts://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process (None for the in-process amqtt broker or when stopped)."""
        return self._impl.pid

    @property
    def running(self) -> bool:
        """True while the broker is serving."""
        return self._impl.running

    def stop(self) -> None:
        """Stop the broker (idempotent). Mosquitto gets SIGTERM, then SIGKILL after a timeout."""
        self._impl.stop()
        _LIVE.discard(self)

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence directory."""
        self.stop()
        self._impl.start()
        _LIVE.add(self)

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LIVE: set[Broker] = set()


@atexit.register
def _stop_live_brokers() -> None:
    for broker in list(_LIVE):
        try:
            broker.stop()
        except Exception:  # noqa: BLE001 - interpreter is exiting
            log.exception("failed to stop %s broker at exit", broker.kind)


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
    start_timeout: float = _START_TIMEOUT_S,
    tls: TlsListener | None = None,
) -> Broker:
    """Start an MQTT broker listening on ``host:port`` and return its handle.

    Args:
        data_dir: directory for the config, password file, log and persistence data
            (created if missing). Reuse it to keep retained messages / sessions.
        host: address to bind (only this address is listened on).
        port: TCP port; None picks a free one.
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
        BrokerStartError: the broker did not come up (message includes its log tail).
    """
    if (username is None) != (password is None):
        raise ValueError("username and password must be given together")
    creds: dict[str, str] = dict(users or {})
    if username is not None and password is not None:
        creds[username] = password
    if max_message_mb is not None and not 0 < max_message_mb * 2**20 <= _MQTT_MAX_PACKET - _PACKET_OVERHEAD:
        raise ValueError(f"max_message_mb out of range: {max_message_mb}")

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    mosquitto = find_mosquitto()
    order: list[BrokerKind] = ["mosquitto", "amqtt"] if prefer == "mosquitto" else ["amqtt", "mosquitto"]
    if not fallback:
        order = order[:1]
    if acl_file is not None or tls is not None:
        order = [k for k in order if k == "mosquitto"]  # never silently drop access control or TLS
        if not order:
            raise ValueError("acl_file and tls are only supported by the mosquitto broker")

    for kind in order:
        impl: _Mosquitto | _Amqtt
        if kind == "mosquitto" and mosquitto:
            impl = _Mosquitto(mosquitto, data_dir, host, port or _free_port(host), creds,
                              max_message_mb, acl_file, start_timeout, tls)
        elif kind == "amqtt" and _amqtt_available():
            if max_message_mb is not None:
                log.warning("amqtt broker does not enforce max_message_mb=%s", max_message_mb)
            impl = _Amqtt(data_dir, host, port or _free_port(host), creds, start_timeout)
        else:
            log.info("%s broker not installed", kind)
            continue
        impl.start()
        broker = Broker(kind=kind, host=host, port=impl.port, data_dir=data_dir, _impl=impl, tls=tls is not None)
        _LIVE.add(broker)
        log.info("started %s broker at %s (data_dir=%s)", kind, broker.url, data_dir)
        return broker

    if acl_file is not None or tls is not None:
        raise BrokerUnavailable("ACLs and TLS need mosquitto: install it (apt-get install mosquitto)")
    raise BrokerUnavailable(_UNAVAILABLE_MSG)


class _Mosquitto:
    """Mosquitto 2.x child process driven by a generated config file."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        host: str,
        port: int,
        users: dict[str, str],
        max_message_mb: float | None,
        acl_file: Path | None,
        start_timeout: float,
        tls: TlsListener | None = None,
    ) -> None:
        if any(c.isspace() for c in str(data_dir)):
            raise ValueError(f"mosquitto config cannot use paths with whitespace: {data_dir}")
        self.binary, self.data_dir, self.host, self.port = binary, data_dir, host, port
        self.start_timeout = start_timeout
        self.log_file = data_dir / "mosquitto.log"
        self.stderr_file = data_dir / "mosquitto.stderr.log"
        self.conf_file = data_dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        persist_dir = data_dir / "persistence"
        persist_dir.mkdir(exist_ok=True)

        lines = [
            "# generated by edge_fleet.broker; rewritten on every start_broker()",
            "per_listener_settings false",
            f"listener {port} {host}",
            "set_tcp_nodelay true",  # small control messages (block requests) must not wait for Nagle
            "persistence true",
            f"persistence_location {persist_dir}/",
            "autosave_interval 30",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.name == "posix" and os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", which cannot write our data_dir.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if users:
            passwd = _find_mosquitto_passwd(binary)
            if passwd is None:
                raise BrokerUnavailable("mosquitto_passwd not found (it ships with the mosquitto package)")
            pw_file = data_dir / "passwd"
            pw_file.unlink(missing_ok=True)
            pw_file.touch(mode=0o600)
            for user, secret in users.items():
                if ":" in user:
                    raise ValueError(f"MQTT username may not contain ':': {user!r}")
                subprocess.run([passwd, "-b", str(pw_file), user, secret],
                               check=True, capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {pw_file}"]
        else:
            lines.append("allow_anonymous true")
        if acl_file is not None:
            acl = Path(acl_file).resolve()
            if not acl.is_file() or any(c.isspace() for c in str(acl)):
                raise ValueError(f"acl_file must be an existing file without whitespace in its path: {acl}")
            lines.append(f"acl_file {acl}")
        if max_message_mb is not None:
            lines.append(f"max_packet_size {int(max_message_mb * 2**20) + _PACKET_OVERHEAD}")
        if tls is not None:
            for f in (tls.cafile, tls.certfile, tls.keyfile):
                if not Path(f).is_file() or any(c.isspace() for c in str(Path(f).resolve())):
                    raise ValueError(f"TLS file must exist and have no whitespace in its path: {f}")
            lines += [f"cafile {Path(tls.cafile).resolve()}", f"certfile {Path(tls.certfile).resolve()}",
                      f"keyfile {Path(tls.keyfile).resolve()}",
                      f"require_certificate {'true' if tls.require_certificate else 'false'}"]
        self.conf_file.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        if self.running:
            return
        log.debug("starting %s -c %s", self.binary, self.conf_file)
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            # Mosquitto logs "... running" only after all listeners are bound, so a
            # foreign process squatting on the port is not mistaken for our broker.
            if self._logged_running(log_offset) and _port_open(self.host, self.port):
                if self.proc.poll() is None:
                    return
                break
            time.sleep(0.02)
        rc = self.proc.poll()
        self.stop()
        raise BrokerStartError(
            f"mosquitto did not start on {self.host}:{self.port} within {self.start_timeout}s "
            f"(exit code {rc}); config {self.conf_file}\n"
            f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}\n"
            f"--- {self.stderr_file} (tail) ---\n{_tail(self.stderr_file)}"
        )

    def _logged_running(self, offset: int) -> bool:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return b" running" in f.read()
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto pid %d ignored SIGTERM; killing (unsaved state may be lost)", proc.pid)
            proc.kill()
            proc.wait()
        log.info("mosquitto pid %d stopped (rc=%s)", proc.pid, proc.returncode)


class _Amqtt:
    """amqtt broker running on its own asyncio loop in a daemon thread."""

    def __init__(self, data_dir: Path, host: str, port: int, users: dict[str, str], start_timeout: float) -> None:
        self.data_dir, self.host, self.port, self.users = data_dir, host, port, users
        self.start_timeout = start_timeout
        self.retained_file = data_dir / "amqtt_retained.json"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.broker: Any = None

    @property
    def pid(self) -> None:
        return None

    @property
    def running(self) -> bool:
        return self.broker is not None

    def _config(self) -> dict[str, Any]:
        auth: dict[str, Any] = (
            {f"{__name__}._AmqttPasswordAuth": {"users": dict(self.users)}}
            if self.users
            else {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        )
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.logging_amqtt.EventLoggerPlugin": {}, **auth},
        }

    async def _start(self) -> Any:
        from amqtt.broker import Broker as AmqttBroker

        broker = AmqttBroker(self._config())
        await broker.start()
        for item in self._load_retained():
            await broker.retain_message(None, item["topic"], base64.b64decode(item["data"]), item["qos"])
        return broker

    async def _settle(self) -> None:
        """Best effort: amqtt PUBACKs before routing a message, so let queued ones finish."""
        for _ in range(40):
            sessions = [sess for sess, _h in self.broker.sessions.values()]
            if all(sess.delivered_message_queue.empty() for sess in sessions):
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        await self._settle()
        retained = [
            {"topic": m.topic, "data": base64.b64encode(bytes(m.data)).decode(), "qos": m.qos or 0}
            for m in self.broker.retained_messages.values()
            if m.data
        ]
        tmp = self.retained_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(retained))
        tmp.replace(self.retained_file)
        await self.broker.shutdown()

    def _load_retained(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.retained_file.read_text()))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            log.exception("ignoring unreadable %s", self.retained_file)
            return []

    def start(self) -> None:
        if self.running:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"amqtt-{self.port}", daemon=True)
        thread.start()
        try:
            self.broker = asyncio.run_coroutine_threadsafe(self._start(), loop).result(self.start_timeout)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT_S)
            loop.close()
            raise BrokerStartError(f"amqtt broker failed to start on {self.host}:{self.port}: {exc}") from exc
        self.loop, self.thread = loop, thread

    def stop(self) -> None:
        if self.broker is None or self.loop is None or self.thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(_STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - still tear the loop down
            log.exception("amqtt shutdown failed")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(_STOP_TIMEOUT_S)
            if not self.thread.is_alive():
                self.loop.close()
            self.broker = self.loop = self.thread = None
        log.info("amqtt broker on port %d stopped", self.port)


_AUTH_PLUGIN: type | None = None


def __getattr__(name: str) -> Any:
    """Build the amqtt auth plugin lazily so importing this module never needs amqtt."""
    global _AUTH_PLUGIN
    if name != "_AmqttPasswordAuth":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _AUTH_PLUGIN is None:
        from amqtt.plugins.base import BaseAuthPlugin

        @dataclass
        class _Config:
            users: dict[str, str] = field(default_factory=dict)

        class _AmqttPasswordAuth(BaseAuthPlugin):
            """Accept only clients whose username/password is in ``Config.users``."""

            Config = _Config

            async def authenticate(self, *, session: Any) -> bool:
                expected = self.config.users.get(session.username or "")
                given = session.password or ""
                if isinstance(given, bytes):
                    given = given.decode("utf-8", "replace")
                return expected is not None and hmac.compare_digest(expected.encode(), given.encode())

        _AUTH_PLUGIN = _AmqttPasswordAuth
    return _AUTH_PLUGIN
