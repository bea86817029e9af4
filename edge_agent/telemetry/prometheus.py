"""Prometheus `/metrics` and JSON `/health` for a running pipeline, on one small HTTP server.

Uses prometheus_client with its own CollectorRegistry (nothing global), bound to 127.0.0.1 by
default. Series (all prefixed `edgekit_`):

    edgekit_pipeline_frames_processed_total   counter
    edgekit_pipeline_frames_captured_total    counter
    edgekit_pipeline_frames_dropped_total     counter   (latest-frame policy drops)
    edgekit_pipeline_errors_total             counter
    edgekit_pipeline_fps                      gauge
    edgekit_pipeline_last_frame_age_seconds   gauge     (absent before the first frame)
    edgekit_pipeline_stage_latency_seconds{stage, quantile}   gauge  (rolling window; stage in
                                              decode, preprocess, inference, postprocess, end_to_end)
    edgekit_model_info{name, version, runtime, precision}     gauge 1
    edgekit_cpu_temperature_celsius, edgekit_cpu_throttled    gauge (only where the board has them)
    process_resident_memory_bytes, process_cpu_seconds_total, ... (prometheus_client's ProcessCollector)

and, when the local inference endpoint runs (edge_agent.serving):

    edgekit_serving_requests_total{protocol, code}   counter   (protocol: kserve_v2 | tf_serving)
    edgekit_serving_errors_total              counter   (answers >= 400)
    edgekit_serving_latency_seconds{quantile} gauge     (rolling, successful inference requests, server side)
    edgekit_serving_batch_size                histogram (rows per model run)
    edgekit_serving_queue_depth               gauge     (requests waiting for the model)

`edge-agent serve --source ... --metrics-port N` serves the same endpoint with the drift series:

    edgekit_drift_psi{feature}                 gauge  PSI of each reference feature over the window
    edgekit_drift_detected                     gauge  1 while the state is `drift`, else 0
    edgekit_drift_window_frames                gauge  frames in the window
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .liveness import pipeline_liveness
from .pipeline_stats import STAGES, PipelineStats
from .serving_stats import ServingStats
from ..errors import AgentError

log = logging.getLogger(__name__)

QUANTILES = {"p50_ms": "0.5", "p90_ms": "0.9", "p95_ms": "0.95", "p99_ms": "0.99"}


class MetricsServerError(AgentError, RuntimeError):
    """The metrics port cannot be bound."""

    code_name = "port"
    kind = "metrics"


class PipelineCollector(Collector):
    """Reads PipelineStats at scrape time."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        snap = self.stats.snapshot()
        for name, key, doc in (
            ("edgekit_pipeline_frames_processed", "processed", "Frames inferred and reported"),
            ("edgekit_pipeline_frames_captured", "captured", "Frames read from the source"),
            ("edgekit_pipeline_frames_dropped", "dropped", "Stale frames dropped by the latest-frame policy"),
            ("edgekit_pipeline_errors", "errors", "Frames that failed in a stage"),
        ):
            yield CounterMetricFamily(name, doc, value=snap[key])
        yield GaugeMetricFamily("edgekit_pipeline_fps", "Processed frames per second (rolling)", value=snap["fps"])
        if snap["last_frame_age_s"] is not None:
            yield GaugeMetricFamily("edgekit_pipeline_last_frame_age_seconds", "Seconds since the last processed frame",
                                    value=snap["last_frame_age_s"])
        lat = GaugeMetricFamily("edgekit_pipeline_stage_latency_seconds",
                                "Rolling latency percentiles per pipeline stage", labels=["stage", "quantile"])
        for stage in STAGES:
            summary = snap["latency_ms"][stage]
            for key, q in QUANTILES.items():
                if key in summary:
                    lat.add_metric([stage, q], summary[key] / 1000.0)
        yield lat
        model = snap["model"]
        if model:
            info = GaugeMetricFamily("edgekit_model_info", "The model bundle being served",
                                     labels=["name", "version", "runtime", "precision"])
            info.add_metric([model["name"], str(model["version"]), model.get("runtime", ""), model.get("precision", "")], 1)
            yield info
        system = snap.get("system") or {}
        if system.get("cpu_temperature_c") is not None:
            yield GaugeMetricFamily("edgekit_cpu_temperature_celsius", "CPU temperature", value=system["cpu_temperature_c"])
        if system.get("throttled") is not None:
            yield GaugeMetricFamily("edgekit_cpu_throttled", "vcgencmd get_throttled bit field", value=system["throttled"])


class DriftCollector(Collector):
    """Reads a drift snapshot (edge_agent.monitor.drift.DriftSnapshot or None) at scrape time."""

    def __init__(self, snapshot: Callable[[], Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        if snap is None:
            return
        scores = GaugeMetricFamily("edgekit_drift_psi", "PSI of a reference feature over the live window",
                                   labels=["feature"])
        for feature, value in sorted(snap.psi.items()):
            scores.add_metric([feature], value)
        yield scores
        yield GaugeMetricFamily("edgekit_drift_detected", "1 while the drift state is raised",
                                value=1.0 if snap.state == "drift" else 0.0)
        yield GaugeMetricFamily("edgekit_drift_window_frames", "Live frames in the drift window", value=snap.frames)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServingCollector(Collector):
    """Reads the serving endpoint's ServingStats at scrape time."""

    def __init__(self, stats: ServingStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        snap = self.stats.snapshot()
        requests = CounterMetricFamily("edgekit_serving_requests", "Inference endpoint requests by protocol and HTTP status",
                                       labels=["protocol", "code"])
        for row in snap["requests"]:
            requests.add_metric([row["protocol"], str(row["status"])], row["count"])
        yield requests
        yield CounterMetricFamily("edgekit_serving_errors", "Inference endpoint answers >= 400", value=snap["errors"])
        lat = GaugeMetricFamily("edgekit_serving_latency_seconds",
                                "Rolling server-side latency of successful inference requests",
                                labels=["quantile"])
        for key, q in QUANTILES.items():
            if key in snap["latency_ms"]:
                lat.add_metric([q], snap["latency_ms"][key] / 1000.0)
        yield lat
        sizes = {int(k): v for k, v in snap["batches"].items()}
        buckets = [(str(b), sum(v for k, v in sizes.items() if k <= b)) for b in BATCH_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily("edgekit_serving_batch_size", "Rows per model run of the endpoint's batcher",
                                    buckets=buckets, sum_value=sum(k * v for k, v in sizes.items()))
        yield GaugeMetricFamily("edgekit_serving_queue_depth", "Requests waiting for the model", value=snap["queue_depth"])


def build_registry(stats: PipelineStats | None, serving: ServingStats | None = None,
                   collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """A private registry with the pipeline and/or serving collectors, any other `collectors` (drift), and the
    process collector (RSS, CPU)."""
    registry = CollectorRegistry(auto_describe=False)
    if stats is not None:
        registry.register(PipelineCollector(stats))
    if serving is not None:
        registry.register(ServingCollector(serving))
    for c in collectors:
        registry.register(c)
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(body, content type) of a scrape: what every /metrics route answers."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """HTTP server: GET /metrics (Prometheus text format), GET /health (JSON; 503 when not ok)."""

    def __init__(self, stats: PipelineStats | None, host: str = "127.0.0.1", port: int = 9100,
                 max_frame_age_s: float = 10.0, serving: ServingStats | None = None,
                 collectors: Iterable[Collector] = ()) -> None:
        self.stats = stats
        self.registry = build_registry(stats, serving, collectors)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = exposition(server.registry)
                    code = 200
                elif path in ("/health", "/healthz"):
                    h = pipeline_liveness(server.stats, max_frame_age_s) if server.stats else {"ok": True}
                    body, ctype, code = json.dumps(h).encode(), "application/json", 200 if h["ok"] else 503
                else:
                    body, ctype, code = b"see /metrics and /health\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics: " + fmt, *args)

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        # port 0 (any free port) is only usable when the user is told which one: not just with -v
        log.log(logging.WARNING if port == 0 else logging.INFO, "metrics on http://%s:%d/metrics, health on /health",
                self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
