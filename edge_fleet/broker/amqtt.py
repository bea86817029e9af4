"""In-process amqtt broker (amqtt==0.12.1): the pure-Python fallback when Mosquitto is missing.

It runs on its own asyncio loop in a daemon thread. Limits, compared with Mosquitto:
  * only retained messages survive ``restart()`` (snapshotted to a JSON file in ``data_dir``);
    persistent sessions / queued QoS>0 messages do not;
  * ACL files, TLS and ``max_message_mb`` are not supported/enforced;
  * it PUBACKs a QoS1 publish before routing it (stop() waits briefly for queued messages);
  * it was reported delivering retained messages to non-matching subscriptions, so clients
    should check ``msg.topic`` themselves.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BrokerStartError
from .base import START_TIMEOUT_S, STOP_TIMEOUT_S, Broker

log = logging.getLogger(__name__)


def amqtt_available() -> bool:
    """True when the amqtt package can be imported."""
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


class _NoTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


class AmqttBroker(Broker):
    """amqtt broker on its own asyncio loop in a daemon thread of this process."""

    kind = "amqtt"

    def __init__(self, data_dir: Path, host: str, port: int, users: dict[str, str],
                 start_timeout: float = START_TIMEOUT_S) -> None:
        super().__init__(host, port, data_dir)
        self.users, self.start_timeout = dict(users), start_timeout
        self.retained_file = data_dir / "amqtt_retained.json"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.broker: Any = None

    @property
    def running(self) -> bool:
        return self.broker is not None

    def reload_users(self, users: dict[str, str]) -> None:
        """New logins for the running broker: its password plugin's user table is replaced."""
        self.users = dict(users)
        plugin = self.broker.plugins_manager.get_plugin("_AmqttPasswordAuth") if self.broker is not None else None
        if plugin is not None:
            plugin.config.users = dict(users)

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

    async def _start_async(self) -> Any:
        from amqtt.broker import Broker as AmqttServer

        broker = AmqttServer(self._config())
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

    async def _stop_async(self) -> None:
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

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"amqtt-{self.port}", daemon=True)
        thread.start()
        quiet = _NoTracebacks()  # a failed start is reported once, as BrokerStartError, not as amqtt's traceback
        logging.getLogger("amqtt.broker").addFilter(quiet)
        try:
            self.broker = asyncio.run_coroutine_threadsafe(self._start_async(), loop).result(self.start_timeout)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            loop.close()
            raise BrokerStartError(f"amqtt broker failed to start on {self.host}:{self.port}: {exc}") from exc
        finally:
            logging.getLogger("amqtt.broker").removeFilter(quiet)
        self.loop, self.thread = loop, thread

    def _stop(self) -> None:
        if self.broker is None or self.loop is None or self.thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_async(), self.loop).result(STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - still tear the loop down
            log.exception("amqtt shutdown failed")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(STOP_TIMEOUT_S)
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
