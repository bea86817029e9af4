"""`edge-agent serve`: the agent daemon. Serves its current model, reports over MQTT, applies updates.

Threads: paho's network thread (callbacks only parse, check and hand over), the inference
loop (edge_agent.ota.live), one update worker running the install state machine, and the
main thread (telemetry, watching the slots for a CLI rollback/install, signals).
"""

from __future__ import annotations

import logging
import queue
import signal
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from .. import __version__
from ..bundle import TrustStore
from ..home import AgentHome
from ..runtimes import ModelSession
from .model_check import HealthCheckFailed, load_checked
from .installer import (
    InstallContext, UpdateJob, abandon, install_lock, load_job, one_line, run_update, save_job, staging_dir,
)
from .phases import Event, Phase
from .live import InferenceLoop, LiveModel
from .protocol import (
    DesiredState, Presence, ProtocolError, ReportedState, Telemetry, Topics, check_device_id, dumps,
)
from .slots import Health, SlotInfo, Slots
from .transfer import BlockDownloader, http_download

log = logging.getLogger(__name__)


# A model on probation is rolled back once at least PROBATION_MIN_ERRORS of its inferences failed and they are more
# than PROBATION_MAX_ERROR_RATE of its inferences: a single bad frame does not undo an update, a model that
# fails on real inputs (which its self-test did not cover) does.
PROBATION_MIN_ERRORS = 3
PROBATION_MAX_ERROR_RATE = 0.2


@dataclass
class Probation:
    """The model an update just switched to, watched on live inputs until `until` (monotonic seconds)."""

    generation: int
    deployment_id: str | None
    slot: str
    previous_slot: str
    started: float
    until: float


class AgentConfigError(ValueError):
    exit_code = 2
    kind = "config"


@dataclass
class AgentConfig:
    """How `edge-agent serve` connects and behaves."""

    broker: str
    device_id: str
    profile_name: str
    latency_budget_ms: float | None
    trust: TrustStore
    prefix: str = "edgekit"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    telemetry_interval_s: float = 10.0
    infer_interval_s: float = 0.05
    threads: int | None = None
    block_retry_s: float = 3.0
    keepalive_s: int = 30
    # After an update switches models, watch the new one on live inputs for this long; if too many of its
    # inferences fail (PROBATION_* below), switch back to the previous slot and report rolled_back. 0 = off.
    probation_s: float = 60.0
    source: str | None = None  # camera/stream/video/images to run the model on (default: self-test inputs)
    results: str | None = None  # JSON-lines file for per-frame results with --source ("-" = stdout)
    extra: dict = field(default_factory=dict)

    def broker_address(self) -> tuple[str, int, bool]:
        u = urllib.parse.urlparse(self.broker)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise AgentConfigError(f"broker URL {self.broker!r} must look like mqtt://host:1883 or mqtts://host:8883")
        tls = u.scheme in ("mqtts", "ssl") or self.tls_ca is not None
        return u.hostname, u.port or (8883 if tls else 1883), tls


def _results_sink(target: str | None):
    """A callable writing one JSON line per result to `target` (a file, or "-" for stdout)."""
    if not target:
        return None
    import json
    import sys

    fh = sys.stdout if target == "-" else open(target, "a", buffering=1)
    lock = threading.Lock()

    def write(record: dict) -> None:
        with lock:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")

    return write


class Agent:
    """The daemon. `run()` blocks until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(self, home: AgentHome, config: AgentConfig, loop: InferenceLoop | None = None) -> None:
        check_device_id(config.device_id)
        self.home, self.config = home, config
        self.slots = Slots(home.slots_dir)
        self.topics = Topics(config.prefix)
        self.t = {k: getattr(self.topics, k)(config.device_id) for k in
                  ("desired", "reported", "presence", "telemetry", "block_request", "block_data")}
        self.feed = None
        if loop is None and config.source:
            from ..pipeline.live_feed import LiveFeed

            self.feed = LiveFeed(config.source, sink=_results_sink(config.results))
            loop = InferenceLoop(source=self.feed, interval_s=0.0, on_result=self.feed.on_result)
        self.loop = loop or InferenceLoop(interval_s=config.infer_interval_s)
        self.job: UpdateJob | None = load_job(home)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._jobs: queue.Queue[UpdateJob | None] = queue.Queue()
        self._busy = threading.Lock()  # held while the worker runs a job
        self._ctx: InstallContext | None = None
        self._downloader: BlockDownloader | None = None
        self.ignored_messages = 0
        self.probation: Probation | None = None
        self.last_downloader_stats = None
        self.client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="update-worker", daemon=True)

    # --- MQTT ----------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgekit-agent-{c.device_id}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        _, _, tls = c.broker_address()
        if tls:
            client.tls_set(ca_certs=c.tls_ca, certfile=c.tls_cert, keyfile=c.tls_key, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.t["presence"], dumps(Presence("offline")), qos=1, retain=True)
        client.reconnect_delay_set(0.2, 5)
        client.max_inflight_messages_set(64)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(self.t["desired"], 1), (self.t["block_data"], 1)])
        client.publish(self.t["presence"], dumps(Presence("online")), qos=1, retain=True)
        self._connected.set()
        self.publish_reported()
        if self._downloader is not None:
            self._downloader.reconnected()
        log.info("connected to %s as %s", self.config.broker, self.config.device_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        try:
            if msg.topic == self.t["block_data"]:
                dl = self._downloader
                if dl is None:
                    self._ignore("block frame with no download in progress")
                elif not dl.on_frame(msg.payload):
                    self.ignored_messages += 1
            elif msg.topic == self.t["desired"]:
                self._on_desired(msg.payload)
            else:  # some brokers deliver retained messages to non-matching subscriptions
                self._ignore(f"message on foreign topic {msg.topic!r}")
        except Exception as exc:  # noqa: BLE001 - a message never takes the agent down
            self._ignore(f"message on {msg.topic!r} could not be handled: {one_line(exc)}")

    def _ignore(self, why: str) -> None:
        self.ignored_messages += 1
        log.warning("ignored %s", why)

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            log.info("desired state cleared")
            return
        try:
            desired = DesiredState.parse(payload)
        except ProtocolError as exc:
            self._ignore(f"desired state: {exc}")
            return
        job = self.job
        if job is not None and job.deployment_id == desired.deployment_id and job.ref.sha256 == desired.bundle.sha256:
            # any phase but idle (rolled_back too: a retained desired state re-sent on reconnect must not
            # re-install what was undone)
            if job.phase is not Phase.IDLE:
                log.info("desired state %s already handled (%s)", desired.deployment_id, job.phase)
                return
        active = self.slots.active()
        if active is not None and active.ref is not None and active.ref.sha256 == desired.bundle.sha256:
            log.info("desired %s v%s is already active", desired.bundle.name, desired.bundle.version)
            if job is None or job.deployment_id != desired.deployment_id:
                self.job = UpdateJob.for_desired(desired)
                self.job.apply(Event.ALREADY_ACTIVE)
                self.job.target_slot = active.name
                save_job(self.home, self.job)
                self.publish_reported()
            return
        if self._ctx is not None:
            log.info("newer deployment %s supersedes the running update", desired.deployment_id)
            self._ctx.cancel.set()
        self._jobs.put(UpdateJob.for_desired(desired))

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def reported_state(self) -> ReportedState:
        active, prev, job = self.slots.active(), self.slots.previous(), self.job
        return ReportedState(
            device_id=self.config.device_id,
            phase=job.phase.value if job else Phase.IDLE.value,
            profile=self.config.profile_name,
            agent_version=__version__,
            current=active.ref if active else None,
            previous=prev.ref if prev else None,
            deployment_id=job.deployment_id if job else None,
            target=job.ref if job else None,
            progress=round(job.progress, 4) if job else 0.0,
            last_error=job.last_error if job else None,
        )

    def publish_reported(self) -> None:
        if self._connected.is_set():
            self._publish(self.t["reported"], dumps(self.reported_state()), retain=True)

    def publish_telemetry(self) -> None:
        live = self.loop.current
        tel = Telemetry(model=live.ref if live else None, inferences=self.loop.inferences, errors=self.loop.errors,
                        latency=self.loop.latency.summary(),
                        extra={"slot": live.slot if live else None, "phase": (self.job.phase if self.job else Phase.IDLE).value,
                               "ignored_messages": self.ignored_messages, "last_inference_error": self.loop.last_error,
                               **({"source": self.config.source, "frames": self.feed.frames,
                                   "dropped_frames": self.feed.dropped} if self.feed else {})})
        if self._connected.is_set():
            self._publish(self.t["telemetry"], dumps(tel))

    # --- the live model --------------------------------------------------------------------

    def boot_model(self) -> None:
        """Serve the active slot; if it is missing or broken, fall back to the other good slot."""
        active = self.slots.active()
        if active is None:
            log.warning("no model installed yet: waiting for an update (or `edge-agent install`)")
            return
        for info in (active, self.slots.info(self.slots.other(active.name))):
            if not info.usable:
                continue
            try:
                session, _ = load_checked(info.bundle_dir, info.manifest, None, self.config.threads)  # type: ignore[arg-type]
            except HealthCheckFailed as exc:
                log.error("slot %s does not work: %s", info.name, exc)
                self.slots.mark_health(info.name, Health.BAD, reason=f"boot: {exc}")
                continue
            if info.name != active.name:
                self.slots.switch(info.name)
                log.warning("active slot %s was broken: rolled back to slot %s", active.name, info.name)
                if self.job is None or not self.job.phase.is_unfinished:
                    self.job = self.job or UpdateJob.for_desired(_placeholder_desired(info, self.config.profile_name),
                                                                 phase=Phase.IDLE)
                    self.job.apply(Event.BOOT_FALLBACK)
                    self.job.last_error = f"slot {active.name} failed to boot"
                    save_job(self.home, self.job)
            self._serve(info, session)
            return
        log.error("no installed slot works: waiting for an update")

    def _serve(self, info: SlotInfo, session: ModelSession | None) -> None:
        if session is None:
            session, _ = load_checked(info.bundle_dir, info.manifest, None, self.config.threads)  # type: ignore[arg-type]
        live = LiveModel.from_slot(info.name, info.ref, info.manifest, session, info.bundle_dir)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        self.loop.swap(live)
        log.info("serving %s v%s from slot %s (swap %.1f ms)", info.ref.name if info.ref else "?",
                 info.ref.version if info.ref else "?", info.name, (time.perf_counter() - t0) * 1000)

    def _watch_slots(self) -> None:
        """Follow a switch made outside the daemon (`edge-agent rollback` / `install`)."""
        if not self._busy.acquire(blocking=False):
            return
        try:
            active = self.slots.active()
            live = self.loop.current
            if active is None or (live is not None and live.slot == active.name):
                return
            if live is not None and active.ref == live.ref and active.name == live.slot:
                return
            log.info("active slot changed outside the daemon: now %s", active.name)
            try:
                self._serve(active, None)
            except HealthCheckFailed as exc:
                log.error("cannot serve slot %s: %s", active.name, exc)
                return
            self.job = load_job(self.home)
            self.publish_reported()
        finally:
            self._busy.release()

    # --- updates ---------------------------------------------------------------------------

    def _fetch(self, ctx: InstallContext) -> Path:
        desired = ctx.job.desired_state
        progress = self._progress_reporter(ctx.job)
        if desired.source.get("type") == "http":
            return http_download(desired.source["url"], staging_dir(self.home), desired.bundle.sha256, desired.size,
                                 cancel=ctx.cancel, progress=progress, cafile=self.config.tls_ca)
        dl = BlockDownloader(
            staging_dir(self.home), desired.bundle.sha256, desired.size, desired.block_size,
            send_request=lambda req: self._publish(self.t["block_request"], dumps(req)),
            is_connected=self._connected.is_set, cancel=ctx.cancel, retry_timeout_s=self.config.block_retry_s,
            progress=progress, ota_dir=self.home.ota_dir,
        )
        self._downloader = dl
        try:
            return dl.run()
        finally:
            self._downloader = None
            self.last_downloader_stats = dl.stats
            dl.close()

    def _progress_reporter(self, job: UpdateJob):
        def report(fraction: float) -> None:
            job.progress = fraction
            self.publish_reported()
        return report

    def _on_switch(self, info: SlotInfo, session: ModelSession | None) -> None:
        self._serve(info, session)
        live = self.loop.current
        if self.config.probation_s > 0 and live is not None:
            now = time.monotonic()
            self.probation = Probation(live.generation, self.job.deployment_id if self.job else None, info.name, self.slots.other(info.name), now,
                                       now + self.config.probation_s)

    def _check_probation(self) -> None:
        """Roll back an update whose model fails on live inputs during its probation window."""
        p = self.probation
        if p is None:
            return
        live = self.loop.current
        if live is None or live.generation != p.generation:  # replaced since (a newer update, a CLI rollback)
            self.probation = None
            return
        ok, errors = self.loop.counts(p.generation)
        if errors >= PROBATION_MIN_ERRORS and errors > PROBATION_MAX_ERROR_RATE * (ok + errors):
            if not self._busy.acquire(blocking=False):
                return  # an update is running; it replaces this model anyway
            try:
                self._probation_rollback(p, ok, errors)
            finally:
                self._busy.release()
        elif time.monotonic() >= p.until:
            log.info("model in slot %s passed probation: %d inferences, %d errors", p.slot, ok, errors)
            self.probation = None

    def _probation_rollback(self, p: Probation, ok: int, errors: int) -> None:
        self.probation = None
        why = (f"rolled back after the switch: {errors} of {ok + errors} inferences on live inputs failed within "
               f"{time.monotonic() - p.started:.0f}s (last: {self.loop.last_error})")
        prev = self.slots.info(p.previous_slot)
        if not prev.usable:
            log.error("%s; but the previous slot %s is not usable: keeping the new model", why, p.previous_slot)
            return
        try:
            session, _ = load_checked(prev.bundle_dir, prev.manifest, None, self.config.threads)  # type: ignore[arg-type]
        except HealthCheckFailed as exc:
            log.error("%s; but the previous slot %s fails its health check (%s): keeping the new model", why,
                      p.previous_slot, exc)
            return
        self.slots.switch(prev.name)
        self.slots.mark_health(p.slot, Health.BAD, reason=why)
        self._serve(prev, session)
        log.error("%s: serving slot %s again", why, prev.name)
        job = self.job
        if job is not None and job.deployment_id == p.deployment_id and job.phase is Phase.SUCCEEDED:
            job.apply(Event.LIVE_FAILURE)
            job.last_error, job.error_kind = why, "probation"
            save_job(self.home, job)
        self.publish_reported()

    def _report(self, job: UpdateJob) -> None:
        self.job = job
        self.publish_reported()

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            while not self._jobs.empty():  # only the newest desired state matters
                newer = self._jobs.get()
                if newer is None:
                    return
                job = newer
            with self._busy, install_lock(self.home):
                self._run_job(job)

    def _context(self, job: UpdateJob) -> InstallContext:
        return InstallContext(
            home=self.home, trust=self.config.trust, profile_name=self.config.profile_name,
            latency_budget_ms=self.config.latency_budget_ms, job=job, fetch=self._fetch,
            on_switch=self._on_switch, report=self._report, threads=self.config.threads,
        )

    def _run_job(self, job: UpdateJob) -> None:
        self.job = job
        ctx = self._ctx = self._context(job)
        try:
            run_update(ctx)
        finally:
            self._ctx = None
        if self.job is job and job.phase is Phase.FAILED:
            log.warning("update %s failed: %s", job.deployment_id, job.last_error)

    def resume(self) -> None:
        """Finish (or abandon) a job a previous run left in an active phase."""
        job = self.job
        if job is None or not job.phase.is_unfinished:
            return
        log.warning("resuming update %s in phase %s after a restart", job.deployment_id, job.phase)
        if job.origin == "file" and job.phase is Phase.DOWNLOADING:
            with self._busy:
                abandon(self._context(job), "side-loaded install was interrupted while copying the file: run it again")
            return
        self._jobs.put(job)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.boot_model()
        self.loop.start()
        self._worker.start()
        self.resume()
        host, port, _ = self.config.broker_address()
        self.client.connect_async(host, port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def run(self) -> None:
        """Serve until stopped: telemetry every interval, slot watch every second."""
        self.start()
        next_tel = time.monotonic() + min(1.0, self.config.telemetry_interval_s)
        try:
            while not self._stop.wait(0.2):
                self._watch_slots()
                self._check_probation()
                if time.monotonic() >= next_tel:
                    self.publish_telemetry()
                    next_tel = time.monotonic() + self.config.telemetry_interval_s
        finally:
            self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        self._stop.set()
        if self._ctx is not None:
            self._ctx.cancel.set()
        self._jobs.put(None)
        if self._connected.is_set():
            info = self.client.publish(self.t["presence"], dumps(Presence("offline")), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self.loop.stop()
        if self.feed is not None:
            self.feed.close()
        self._worker.join(timeout=5)


def _placeholder_desired(info: SlotInfo, profile: str) -> DesiredState:
    assert info.ref is not None
    return DesiredState(deployment_id="local", bundle=info.ref, size=1, profile=profile, signature={})


def install_signal_handlers(agent: Agent) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
