"""`edge-agent run BUNDLE --source SPEC`: the camera/video pipeline from the command line.

Adds options to the existing `run` command (edge_agent/cli.py): without --source, `run` keeps
classifying image/.npy files; with --source it streams frames through the pipeline.
"""

from __future__ import annotations

import os

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from ..bundle import sha256_file
from ..cli_types import port_number, seconds, whole_number
from ..home import AgentHome, unpacked_bundle
from ..telemetry.pipeline_stats import ModelInfo, PipelineStats
from ..monitor.budget import INFERENCE_SHARE
from ..monitor.drift import DriftConfig
from ..monitor.watch import add_drift_arguments, pipeline_drift
from ..errors import AgentError, exit_code, unwind_on_sigterm
from ..telemetry.system import available_memory_bytes
from .scheduling import PRIORITIES, SCHEDULES, ScheduleError, memory_streams, resolve_streams

log = logging.getLogger(__name__)


class UsageError(AgentError, ValueError):
    code_name = "usage"
    kind = "usage"


def cmd_run_source(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    """Verify the bundle, open the source, run the pipeline until the source ends or --max-frames. SIGTERM before the
    pipeline runs (verifying, opening a slow stream, loading sessions) unwinds like Ctrl-C (exit 130): it killed the
    process, leaving the unpacked bundle in /tmp/edgekit-run-*; during the run _stop_on_sigterm stops it cleanly."""
    with unwind_on_sigterm():
        result, text = _run_source(args, home)
    if result["interrupted"]:  # Ctrl-C: the summary of what ran, then 130 as every edgekit CLI (it exited 0)
        args.exit_code = exit_code("interrupted")
    return result, text


def _run_source(args: argparse.Namespace, home: AgentHome) -> tuple[dict[str, Any], str]:
    from ..cli import _profile_name
    from ..runtimes import load_session
    from .runner import Pipeline
    from .sinks import AnnotatedVideoSink, JsonLinesSink, MjpegPreviewSink, Sink, TelemetrySink
    from .sources import ReconnectPolicy, auto_decode_threads, open_source

    if args.inputs:
        raise UsageError("give either input files or --source, not both")
    trust = home.trust_store(args.trust)
    reconnect = ReconnectPolicy(max_attempts=args.reconnect_attempts, max_total=args.reconnect_max_seconds)
    with unpacked_bundle(args.bundle, trust, _profile_name(home, args), args.allow_profile_mismatch) as vb:
        m = vb.manifest
        threads = args.threads or pipeline_threads()
        source = open_source(args.source, reconnect=reconnect, open_timeout_ms=int(args.open_timeout * 1000),
                             read_timeout_ms=int(args.open_timeout * 1000), decode_threads=args.decode_threads,
                             file_decode_threads=auto_decode_threads(threads))
        policy = args.policy or ("latest" if source.live else "all")
        known = len(getattr(source, "files", ())) or None  # images: their count (one image: one session)
        cap = memory_streams((vb.unpacked_to / m.model_file).stat().st_size, available_memory_bytes())
        streams, per_stream = resolve_streams(args.streams, policy, threads, known, cap)  # argparse checked it
        if args.streams == "auto" and cap is not None and streams == cap < min(threads, known or threads):
            log.info("inference streams: %d (one session per thread would not fit in half the available memory)", cap)
        sessions = [load_session(vb.unpacked_to, m, threads=per_stream) for _ in range(streams)]
        stats = PipelineStats(
            model=ModelInfo(m.name, m.version, m.runtime, m.precision, sha256_file(Path(args.bundle))[1]),
            source=source.description,
        )
        closers: list[Any] = [source]
        sinks: list[Sink] = []
        try:
            output = args.output if args.output is not None else "-"
            _refuse_overwriting_the_source(source, {"--output": None if output in ("-", "none") else output,
                                                    "--annotate": args.annotate})
            if output != "none":
                sinks.append(JsonLinesSink(output))
            if args.annotate:
                sinks.append(AnnotatedVideoSink(args.annotate, fps=source.fps or 15.0))
            if args.preview_port is not None:
                sinks.append(MjpegPreviewSink(args.preview_host, args.preview_port))
            if args.mqtt_telemetry:
                from ..telemetry.mqtt_reporter import MqttTelemetryReporter

                sinks.append(TelemetrySink(MqttTelemetryReporter(
                    args.mqtt_telemetry, stats, device_id=args.device_id, interval=args.telemetry_interval,
                    per_frame_results=args.mqtt_results)))
            drift = pipeline_drift(m, vb.unpacked_to, DriftConfig(window=args.drift_window,
                                                                  threshold=args.drift_threshold), args.drift_budget)
            if args.metrics_port is not None:
                from ..telemetry.prometheus import DriftCollector, MetricsServer

                closers.append(MetricsServer(stats, args.metrics_host, args.metrics_port,
                                             collectors=[DriftCollector(drift.snapshot)]))
            try:
                pipeline = Pipeline(source, sessions, m, sinks, stats=stats, policy=args.policy,
                                    max_frames=args.max_frames, top_k=args.top_k, schedule=args.schedule,
                                    helper_priority=args.helper_priority,
                                    observers=[drift])
            except ScheduleError as exc:  # a schedule the source cannot take (serial on a live camera)
                raise UsageError(str(exc)) from exc
            restore = _stop_on_sigterm(pipeline)
            try:
                summary = pipeline.run()
            finally:
                restore()
        finally:
            for c in reversed(closers):
                c.close()
    args.results_on_stdout = output == "-"  # the summary goes to stderr (text) or on one line (--json)
    d = summary.to_dict()
    snap = drift.snapshot()
    d["drift"] = snap.to_dict()
    e2e = d["stats"]["latency_ms"]["end_to_end"]
    text = (("interrupted (Ctrl-C): " if summary.interrupted else "")
            + f"{summary.frames} frames from {source.description} in {summary.seconds:.1f} s ({summary.fps:.1f} fps), "
            f"dropped {summary.dropped}, errors {summary.errors}, end-to-end p50 {e2e.get('p50_ms', 0):.1f} ms "
            f"p99 {e2e.get('p99_ms', 0):.1f} ms; drift {_drift_text(snap)}")
    return d, text


def _drift_text(snap: Any) -> str:
    """The summary's drift state, saying why a file of many frames left the window `warming_up`: the budget
    observed a sample of them (a tiny model's file: 31 of 800 frames), which the bare state did not tell."""
    if snap.worst:
        return f"{snap.state} ({snap.worst} PSI {snap.psi[snap.worst]})"
    if snap.state == "warming_up":
        left_out = snap.live.get("not_sampled") or 0
        return (f"warming_up ({snap.frames} of --drift-window {snap.window} frames observed"
                + (f"; {left_out} not sampled within --drift-budget, `all` observes every frame)" if left_out else ")"))
    return snap.state


def _refuse_overwriting_the_source(source: Any, targets: dict[str, Any]) -> None:
    """--output or --annotate naming the source's video (or one of its images) truncated it before it was read: the
    run ended after 2 of tree.avi's 68 frames with exit 0 and the video was gone."""
    files = [Path(f) for f in getattr(source, "files", ())]
    target = getattr(source, "target", None)
    if isinstance(target, str) and Path(target).is_file():
        files.append(Path(target))
    for option, path in targets.items():
        if path is not None and Path(path).is_file() and any(os.path.samefile(path, f) for f in files):
            raise UsageError(f"{option} {path} is a file of the source: it would be overwritten (give another file)")


def _stop_on_sigterm(pipeline: Any):
    """SIGTERM (systemd stop) ends the run cleanly; returns a function restoring the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    return lambda: signal.signal(signal.SIGTERM, old)


def pipeline_threads() -> int:
    """Inference threads for the camera pipeline when --threads is not given: all cores. Measured on 2 cores
    (docs/detection.md, "Pipeline vs bare loop"): one inference thread beside the decoding one gave a YOLOv8n
    pipeline 0.72 of the bare loop on both cores (the model runs 1.5x slower on one core), while both threads with
    decoding beside them gave 0.97. Only a model as cheap as decoding a frame (BlazeFace) can gain from
    `--threads` = cores - 1."""
    return os.cpu_count() or 1


def _drift_budget(text: str) -> float | None:
    """argparse type: a percentage > 0 (returned as a share) or `all` (None: observe every frame)."""
    if text == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100] or 'all', got {text!r}")
    return value / 100.0


def _decode_threads(text: str) -> int:
    """argparse type: a whole number of FFmpeg decoding threads >= 1 (OpenCV passes anything on to FFmpeg)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of threads >= 1, got {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    """argparse type: seconds > 0. OpenCV's FFmpeg backend takes 0 as "no timeout" (and a negative one likewise
    never fires), so a stream that accepts the connection but sends nothing hung the run for ever."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _streams(text: str) -> str | int:
    """argparse type: `auto` or a whole number of inference streams >= 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {text!r}")
    return int(text)


# camera/video options without a default: given without --source they would be ignored
_SOURCE_ONLY = (("--max-frames", "max_frames"), ("--output", "output"), ("--annotate", "annotate"),
                ("--preview-port", "preview_port"), ("--metrics-port", "metrics_port"),
                ("--mqtt-telemetry", "mqtt_telemetry"), ("--policy", "policy"), ("--decode-threads", "decode_threads"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the --source options to `edge-agent run` and route --source runs here."""
    p = subparsers.choices.get("run")
    if p is None:  # pragma: no cover - the core CLI always defines `run`
        return
    plain_run = p.get_default("func")
    g = p.add_argument_group("camera / video (with --source)")
    g.add_argument("--source", help="/dev/videoN or camera index, rtsp:// or http:// URL, video file, image folder or image")
    g.add_argument("--max-frames", type=whole_number(1), default=None, help="stop after N frames (files: the first N)")
    g.add_argument("--output", help="per-frame JSON lines: a file, '-' for stdout (default) or 'none'")
    g.add_argument("--annotate", type=Path, help="write an annotated video (.mp4 or .avi)")
    g.add_argument("--preview-port", type=port_number, help="serve an MJPEG preview on this port (0: any free port)")
    g.add_argument("--preview-host", default="127.0.0.1", help="preview bind address (default 127.0.0.1)")
    g.add_argument("--metrics-port", type=port_number, help="serve Prometheus /metrics and /health on this port")
    g.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address (default 127.0.0.1)")
    add_drift_arguments(g)
    g.add_argument("--drift-budget", type=_drift_budget, default=INFERENCE_SHARE, metavar="PERCENT|all",
                   help=f"CPU the drift statistics may take, in percent of the model's inference time (default "
                        f"{INFERENCE_SHARE * 100:g}: a uniform sample of the frames); all: every frame, whatever it "
                        "costs (docs/monitoring.md)")
    g.add_argument("--mqtt-telemetry", metavar="URL", help="publish telemetry to mqtt://[user:pass@]host[:port]")
    g.add_argument("--device-id", help="device id in telemetry topics (default: host name)")
    g.add_argument("--telemetry-interval", type=seconds(positive=True), default=10.0, help="seconds between telemetry messages (default 10)")
    g.add_argument("--mqtt-results", action="store_true", help="include per-frame results in telemetry messages")
    g.add_argument("--policy", choices=["latest", "all"], help="frame policy (default: latest for live sources, all for files)")
    g.add_argument("--schedule", choices=list(SCHEDULES), default="auto",
                   help="threads: decode/preprocess/postprocess overlap inference on their own threads; serial: "
                        "one thread per stream does each frame in turn (files only); auto (default): serial for a file or "
                        "folder inferred by several streams, threads otherwise (docs/detection.md)")
    g.add_argument("--helper-priority", choices=list(PRIORITIES), default="auto",
                   help="priority of the decode/preprocess/postprocess threads beside inference: normal, low "
                        "(nice +10), idle (SCHED_IDLE); auto (default): see docs/detection.md")
    g.add_argument("--streams", type=_streams, default="auto", metavar="auto|N",
                   help="sessions of the model inferring consecutive frames side by side, --threads shared among "
                        "them (default auto: one single-threaded session per thread for files and folders, one "
                        "session for live sources, which would get up to a frame more latency; docs/detection.md)")
    g.add_argument("--decode-threads", type=_decode_threads, default=None, metavar="N",
                   help="FFmpeg decoding threads (default: 1 for a video file when inference uses every core, "
                        "FFmpeg's own choice otherwise; docs/detection.md)")
    g.add_argument("--open-timeout", type=_timeout, default=10.0, help="seconds to wait when opening/reading a stream (default 10)")
    g.add_argument("--reconnect-attempts", type=whole_number(0), default=6, help="reconnect attempts for a dropped live source (default 6)")
    g.add_argument("--reconnect-max-seconds", type=seconds(), default=60.0, help="give up reconnecting after this long (default 60)")

    def run_dispatch(args: argparse.Namespace, home: AgentHome) -> tuple[Any, str]:
        if args.source is not None:
            return cmd_run_source(args, home)
        if not args.inputs:
            raise UsageError("give input files (images, .npy or .npz) or --source SPEC (camera, video, folder)")
        given = [flag for flag, dest in _SOURCE_ONLY if getattr(args, dest, None) is not None]
        if given:  # they were ignored: `run BUNDLE photo.png --annotate out.avi` wrote nothing, exit 0
            raise UsageError(f"{', '.join(given)} only work{'s' if len(given) == 1 else ''} with --source (e.g. "
                             f"--source {args.inputs[0]})")
        return plain_run(args, home)

    p.set_defaults(func=run_dispatch)
