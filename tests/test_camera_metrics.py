"""Monitoring of the camera pipeline: Prometheus /metrics and /health scraped over HTTP while it runs,
and telemetry through a real MQTT broker (Mosquitto) as protocol Telemetry messages."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.bundle import TrustStore, generate_keypair, verify_bundle
from edge_agent.cli import main
from edge_agent.ota.protocol import Telemetry, Topics
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.sinks import CollectSink, TelemetrySink
from edge_agent.runtimes import load_session
from edge_agent.telemetry.mqtt_reporter import MqttTelemetryReporter
from edge_agent.telemetry.pipeline_stats import ModelInfo, PipelineStats
from edge_agent.telemetry.prometheus import MetricsServer
from edge_fleet.broker import start_broker

from .camera_helpers import SyntheticLiveSource, detector_bundle, write_video
from .test_camera_detection import yolo_output

WAIT = 10.0  # upper bound for network waits; never asserted as a duration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    key, pub = generate_keypair(tmp / "keys")
    path = detector_bundle(tmp, key, {"output0": yolo_output()}, {"format": "yolo"})
    vb = verify_bundle(path, TrustStore.from_paths([pub]), unpack_to=tmp / "unpacked")
    return SimpleNamespace(path=path, pub=pub, vb=vb)


@pytest.fixture()
def broker(tmp_path):
    b = start_broker(tmp_path / "broker")
    yield b
    b.stop()


def frames():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (100, 200, 3), dtype=np.uint8) for _ in range(4)]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_and_health_are_scraped_over_http_while_running(bundle):
    m = bundle.vb.manifest
    stats = PipelineStats(model=ModelInfo(m.name, m.version, m.runtime, m.precision), source="synthetic")
    server = MetricsServer(stats, port=0)
    try:
        assert server.host == "127.0.0.1"
        code, body = get(server.url + "/health")
        assert code == 200 and json.loads(body)["reason"] == "starting"
        session = load_session(bundle.vb.unpacked_to, m)
        source = SyntheticLiveSource(frames(), fps=200.0)
        pipe = Pipeline(source, session, m, [CollectSink()], stats=stats, max_frames=10_000)
        runner = threading.Thread(target=pipe.run, daemon=True)
        runner.start()
        deadline = time.monotonic() + WAIT
        while stats.processed < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        code, body = get(server.url + "/metrics")
        text = body.decode()
        code_h, health_body = get(server.url + "/health")
        pipe.stop()
        runner.join(WAIT)
    finally:
        server.close()
    assert code == 200
    for series in (
        "edgekit_pipeline_frames_processed_total",
        "edgekit_pipeline_frames_dropped_total",
        "edgekit_pipeline_errors_total 0.0",
        "edgekit_pipeline_fps",
        "edgekit_pipeline_last_frame_age_seconds",
        'edgekit_pipeline_stage_latency_seconds{quantile="0.5",stage="inference"}',
        'edgekit_pipeline_stage_latency_seconds{quantile="0.99",stage="end_to_end"}',
        'edgekit_pipeline_stage_latency_seconds{quantile="0.9",stage="decode"}',
        'edgekit_model_info{name="tiny-detector",precision="fp32",runtime="onnxruntime",version="1"} 1.0',
        "process_resident_memory_bytes",
    ):
        assert series in text, series
    processed = float(next(line.split()[1] for line in text.splitlines()
                           if line.startswith("edgekit_pipeline_frames_processed_total")))
    assert processed >= 20
    health = json.loads(health_body)
    assert code_h == 200 and health["ok"] is True
    assert health["model"] == {"name": "tiny-detector", "version": 1}
    assert health["fps"] > 0 and health["last_frame_age_s"] is not None
    assert set(health["system"]) == {"cpu_temperature_c", "throttled", "rss_bytes"}
    assert health["system"]["rss_bytes"] > 0
    assert health["system"]["throttled"] is None  # no vcgencmd on this machine


def test_health_turns_bad_when_frames_stop(bundle):
    stats = PipelineStats(source="stalled")
    stats.frame_done()
    server = MetricsServer(stats, port=0, max_frame_age_s=0.05)
    try:
        time.sleep(0.2)  # let the last frame age past the (tiny) limit
        code, body = get(server.url + "/health")
    finally:
        server.close()
    assert code == 503 and json.loads(body)["ok"] is False


class Subscriber:
    def __init__(self, url_host: str, port: int, topic: str) -> None:
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-fleet")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = lambda c, u, msg: self.messages.put(msg.payload)
        self.c.connect(url_host, port)
        self.c.loop_start()
        assert self.subscribed.wait(WAIT)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_mqtt_telemetry_is_rate_limited_and_follows_the_protocol(bundle, broker):
    m = bundle.vb.manifest
    topic = Topics().telemetry("cam-1")
    sub = Subscriber(broker.host, broker.port, topic)
    try:
        stats = PipelineStats(model=ModelInfo(m.name, m.version, m.runtime, m.precision, "ab" * 32), source="synthetic")
        reporter = MqttTelemetryReporter(broker.url, stats, device_id="cam-1", interval=0.3, per_frame_results=True)
        session = load_session(bundle.vb.unpacked_to, m)
        source = SyntheticLiveSource(frames(), fps=100.0, total=60)  # about 0.6 s of camera
        summary = Pipeline(source, session, m, [TelemetrySink(reporter)], stats=stats).run()  # close() sends a last one
        got = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                got.append(Telemetry.parse(sub.messages.get(timeout=0.5)))
            except queue.Empty:
                if got and got[-1].inferences == summary.frames:
                    break
    finally:
        sub.close()
    assert got, "no telemetry arrived"
    last = got[-1]
    assert last.inferences == summary.frames and last.errors == 0
    assert last.model is not None and last.model.name == "tiny-detector" and last.model.sha256 == "ab" * 32
    assert {"p50_ms", "p99_ms"} <= set(last.latency)
    assert {"fps", "dropped", "stages_ms", "system"} <= set(last.extra)
    assert set(last.extra["stages_ms"]) == {"decode", "preprocess", "inference", "postprocess"}
    # rate-limited: far fewer messages than frames; per-frame results ride along
    assert len(got) < summary.frames / 5
    results = [r for t in got for r in t.extra.get("results", [])]
    assert results and all(r["kind"] == "detection" for r in results)


def test_cli_sends_telemetry_with_a_video_source(bundle, broker, tmp_path, capsys):
    rng = np.random.default_rng(2)
    video = write_video(tmp_path / "v.avi", [rng.integers(0, 255, (100, 200, 3), dtype=np.uint8) for _ in range(12)])
    sub = Subscriber(broker.host, broker.port, Topics().all_telemetry())
    try:
        code = main(["run", str(bundle.path), "--source", str(video), "--trust", str(bundle.pub), "--output", "none",
                     "--mqtt-telemetry", broker.url, "--device-id", "pi-7", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        payload = sub.messages.get(timeout=WAIT)
    finally:
        sub.close()
    t = Telemetry.parse(payload)
    assert t.inferences == 12 == json.loads(out)["frames"]
    assert t.model is not None and t.model.version == 1 and len(t.model.sha256) == 64
