"""Rate-limited pipeline telemetry to the fleet over MQTT (paho-mqtt 2.x).

Publishes `edge_agent.ota.protocol.Telemetry` messages on `Topics.telemetry(device_id)` at most
once per `interval` seconds: inference count, errors, end-to-end latency percentiles, and in
`extra` the FPS, drops, per-stage latency, system figures and (optionally) the per-frame results
gathered since the last message (capped so a message stays well under the protocol's size limit).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any

from ..errors import AgentError
from ..ota.broker_url import parse_broker_url
from ..ota.protocol import DEFAULT_PREFIX, BundleRef, Telemetry, Topics, check_device_id, dumps
from .pipeline_stats import PipelineStats

log = logging.getLogger(__name__)


class TelemetryConfigError(AgentError, ValueError):
    """The MQTT telemetry URL or device id is not usable."""

    code_name = "usage"


def default_device_id() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()).strip("-._")
    return host[:64] or "device"


class MqttTelemetryReporter:
    """Connects to `mqtt://[user:pass@]host[:port]` and publishes Telemetry (QoS 0, not retained)."""

    def __init__(
        self,
        url: str,
        stats: PipelineStats,
        device_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        interval: float = 10.0,
        per_frame_results: bool = False,
        max_results: int = 50,
    ) -> None:
        import paho.mqtt.client as mqtt

        try:
            broker = parse_broker_url(url)
        except ValueError as exc:
            raise TelemetryConfigError(f"--mqtt-telemetry: {exc}") from None
        self.device_id = check_device_id(device_id or default_device_id())
        self.topic = Topics(prefix).telemetry(self.device_id)
        self.stats = stats
        self.interval = interval
        self.per_frame_results = per_frame_results
        self._results: deque[dict[str, Any]] = deque(maxlen=max_results)
        self._last_sent = 0.0
        self._lock = threading.Lock()
        self.sent = 0
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.device_id}-pipeline")
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(1, 30)
        # connect_async + loop_start: never blocks the pipeline; paho reconnects on its own.
        self._client.connect_async(broker.host, broker.port, keepalive=30)
        self._client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._periodic, name="mqtt-telemetry", daemon=True)
        self._thread.start()

    def _periodic(self) -> None:
        """Publish every `interval` seconds, also while no frame arrives (a stalled camera shows)."""
        while not self._stop.wait(min(1.0, self.interval)):
            try:
                self.maybe_publish()
            except Exception:  # noqa: BLE001 - telemetry must never stop the pipeline
                log.warning("telemetry publish failed", exc_info=True)

    def add_result(self, record: dict[str, Any]) -> None:
        """Remember a per-frame result for the next message (when per-frame results are on)."""
        if self.per_frame_results:
            with self._lock:
                self._results.append(record)

    def maybe_publish(self, force: bool = False) -> bool:
        """Publish when `interval` has passed since the last message (or when forced)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_sent < self.interval:
                return False
            self._last_sent = now
            results = list(self._results)
            self._results.clear()
        self._client.publish(self.topic, self.message(results), qos=0)
        self.sent += 1
        return True

    def message(self, results: list[dict[str, Any]] | None = None) -> bytes:
        """The Telemetry JSON for the current figures."""
        snap = self.stats.snapshot()
        model = snap.get("model") or {}
        ref = None
        if model.get("sha256"):
            ref = BundleRef(name=model["name"], version=int(model["version"]), sha256=model["sha256"])
        e2e = snap["latency_ms"]["end_to_end"]
        extra = {
            "source": snap["source"],
            "fps": snap["fps"],
            "captured": snap["captured"],
            "dropped": snap["dropped"],
            "last_frame_age_s": snap["last_frame_age_s"],
            "stages_ms": {k: v for k, v in snap["latency_ms"].items() if k != "end_to_end"},
            "system": snap.get("system", {}),
        }
        if results:
            extra["results"] = results
        msg = Telemetry(
            model=ref,
            inferences=snap["processed"],
            errors=snap["errors"],
            latency={k: v for k, v in e2e.items() if k != "count"},
            extra=extra,
        )
        payload = dumps(msg)
        if len(payload) > 200_000 and results:  # keep clear of the protocol's 256 KiB limit
            extra["results"] = results[-5:]
            payload = dumps(msg)
        return payload

    def close(self) -> None:
        """Send a final message (waits up to 2 s when connected), then disconnect."""
        self._stop.set()
        self._thread.join(2.0)
        try:
            info = self._client.publish(self.topic, self.message(), qos=1)
            if self._client.is_connected():
                info.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError) as exc:
            log.debug("final telemetry not sent: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
