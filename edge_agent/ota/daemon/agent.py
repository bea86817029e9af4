"""`edge-agent serve`: the agent daemon. Serves its current model, reports over MQTT, applies updates.

`Agent` only wires the parts, each with one job:

    mqtt_link      the MQTT connection, presence, routing of messages by topic
    desired        desired state -> at most one update job (repeats dropped)
    update_worker  the thread running the install state machine (edge_agent.ota.installer)
    boot           which slot is served: boot with fallback, after a switch, after a CLI switch
    probation      a new model failing on live inputs is switched back
    monitor        drift of live inputs (--source frames, --http requests); the shadow run of a gated update
    reporter       reported state and telemetry
    current_job    the job all of them report, stored on every change

Threads: paho's network thread (callbacks only parse, check and hand over), the inference
loop (edge_agent.ota.live), the update worker, and the main thread (telemetry, probation,
watching the slots for a CLI rollback/install, signals).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable

from ...finite_json import dumps as finite_dumps
from ...home import AgentHome
from ...runtimes import ModelSession
from ...monitor.drift import DriftConfig
from ...monitor.watch import DriftWatch, LiveShadow
from ...pipeline.observe import LiveInputs
from ..live import InferenceLoop
from ..protocol import Topics, check_device_id
from ..slots import SlotInfo, Slots
from .boot import SlotServing
from .config import AgentConfig
from .current_job import CurrentJob
from .desired import DesiredStateHandler
from .mqtt_link import DeviceTopics, MqttLink
from .probation import ProbationWatch
from .reporter import Reporter
from .sd_notify import Notifier
from .update_worker import UpdateWorker

log = logging.getLogger(__name__)
SLOW_STOP_S = 3.0  # a part taking longer than this to stop is named in the log


class Agent:
    """The daemon. `run()` blocks until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(self, home: AgentHome, config: AgentConfig, loop: InferenceLoop | None = None) -> None:
        check_device_id(config.device_id)
        self.home, self.config = home, config
        self.slots = Slots(home.slots_dir, config.trust)  # the trust store lets a damaged slot.json be rebuilt
        self.topics = DeviceTopics.for_device(Topics(config.prefix), config.device_id)
        self.feed, self.loop = _inference_loop(config, loop)
        self._stop = threading.Event()
        self._busy = busy = threading.Lock()  # held while an update runs or the served model changes outside one
        self.link = MqttLink(config, self.topics)
        self.jobs = CurrentJob(home, on_change=lambda: self.reporter.publish_reported())
        self.serving = SlotServing(self.slots, self.loop, config.threads)
        self.probation = ProbationWatch(config.probation_s, self.loop, self.slots, self.serving, self.jobs, busy)
        self.drift = DriftWatch(DriftConfig(window=config.drift_window, threshold=config.drift_threshold))
        self.loop.swap_listeners.append(self.drift.follow)  # a switched model's drift window starts at the switch
        self.live_inputs: list[LiveInputs] = []  # what drift and shadow runs watch (watch_inputs)
        if self.feed is not None:
            self.watch_inputs(self.feed)
        shadow = LiveShadow(self.live_inputs, config.latency_budget_ms)
        self.worker = UpdateWorker(home, config, self.jobs, self.link, self._on_switch, busy, shadow)
        self.desired = DesiredStateHandler(self.slots, self.jobs, self.worker)
        self.reporter = Reporter(config, self.link, self.slots, self.jobs, self.loop, self.feed, self.drift)
        self.metrics = None
        self.notifier = Notifier()
        self.link.route(self.topics.desired, self.desired.on_payload)
        self.link.route(self.topics.block_data, self.worker.on_block_frame, zero_copy=True)
        self.link.on_connected(self.reporter.publish_reported)
        self.link.on_connected(self.worker.reconnected)

    def watch_inputs(self, source: LiveInputs) -> None:
        """Live inputs the served model answers (the --source feed, the --http endpoint): drift and shadow runs see them."""
        source.add_observer(self.drift)
        self.live_inputs.append(source)

    def _on_switch(self, info: SlotInfo, session: ModelSession | None) -> None:
        """The update switched slots: serve the new model and put it on probation."""
        self.serving.serve(info, session)
        self.probation.start(info)

    def _follow_outside_switch(self) -> None:
        if self._busy.acquire(blocking=False):
            try:
                self.serving.follow_outside_switch(self.jobs)
            finally:
                self._busy.release()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.serving.boot(self.jobs, self.config.profile_name)
        if self.config.metrics_port is not None:
            from ...telemetry.prometheus import DriftCollector, MetricsServer

            self.metrics = MetricsServer(None, self.config.metrics_host, self.config.metrics_port,
                                         collectors=[DriftCollector(self.drift.snapshot)])
        self.loop.start()
        self.worker.start()
        self.worker.resume()
        self.link.start()

    def run(self) -> None:
        """Serve until stopped: telemetry every interval; probation and the slot watch several times a second."""
        self.start()
        self.notifier.ready(self._serving_status())
        next_tel = time.monotonic() + min(1.0, self.config.telemetry_interval_s)
        try:
            while not self._stop.wait(0.2):
                if self.loop.alive:
                    self.notifier.ping_watchdog()
                self._follow_outside_switch()
                self.probation.check()
                self.reporter.publish_if_drift_changed()
                if time.monotonic() >= next_tel:
                    self.reporter.publish_telemetry()
                    next_tel = time.monotonic() + self.config.telemetry_interval_s
        finally:
            self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _serving_status(self) -> str:
        active = self.slots.active()
        model = f"{active.ref.name} v{active.ref.version}" if active and active.ref else "no model yet"
        return f"serving {model} as {self.config.device_id}"

    def shutdown(self) -> None:
        """Stop every part in turn; a part slow to stop is named in the log (a service manager's stop timeout then
        says which one held it, and `kill -USR1` dumps where every thread is)."""
        self._stop.set()
        self.notifier.stopping()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("update worker", self.worker.stop), ("MQTT link", self.link.stop), ("inference loop", self.loop.stop),
            ("metrics endpoint", self.metrics.close if self.metrics is not None else lambda: None),
            ("frame source", self.feed.close if self.feed is not None else lambda: None),
            ("update job", lambda: self.worker.join(timeout=5)),
        ]
        for part, stop in steps:
            started = time.monotonic()
            stop()
            took = time.monotonic() - started
            if took > SLOW_STOP_S:
                log.warning("stopping the %s took %.1f s", part, took)


def _inference_loop(config: AgentConfig, loop: InferenceLoop | None):  # noqa: ANN202
    """(feed, loop): the given loop, or one over `--source` frames, or one over the self-test inputs."""
    if loop is not None or not config.source:
        return None, loop or InferenceLoop(interval_s=config.infer_interval_s)
    from ...pipeline.live_feed import LiveFeed

    feed = LiveFeed(config.source, sink=_results_sink(config.results))
    return feed, InferenceLoop(source=feed, interval_s=0.0, on_result=feed.on_result)


def _results_sink(target: str | None) -> Callable[[dict[str, Any]], None] | None:
    """A callable writing one JSON line per result to `target` (a file, or "-" for stdout)."""
    if not target:
        return None
    fh = sys.stdout if target == "-" else open(target, "a", buffering=1)
    lock = threading.Lock()

    def write(record: dict) -> None:
        with lock:
            fh.write(finite_dumps(record, separators=(",", ":")) + "\n")

    return write


def install_signal_handlers(agent: Agent) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack on stderr
