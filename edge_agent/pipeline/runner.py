"""The threaded camera/video pipeline: capture -> preprocess -> inference -> postprocess + sinks.

Four threads hand frames over through channels, so decoding and preprocessing of the next frames
overlap with inference of the current one:

    capture --raw--> preprocess --prepared--> inference --results--> postprocess + sinks

Given several sessions of one model (inference *streams*, scheduling.resolve_streams), an inference thread per
session takes the next frame with a ticket and the results go on in ticket order (channels.ReorderChannel): sinks
see every frame in order, and no operator waits at a barrier for a thread a helper preempted.

Schedule 'serial' (files only) runs the same four steps in turn on one thread instead, and the helper threads
(capture, preprocess, postprocess + sinks) can run at a lower priority than inference: scheduling.py.

Policies:
  * "all" (files, image folders): bounded FIFOs with back-pressure, every frame is processed.
  * "latest" (live cameras and streams): `raw` and `prepared` are one-slot LatestSlots; a newer frame replaces an
    unread one (counted as dropped). Inference always takes the freshest prepared frame, so latency stays bounded
    when the model is slower than the camera. The results hand-over stays a FIFO (all inferred is reported).

Per-frame errors in preprocess/inference/postprocess/sinks are counted and logged; after
`max_consecutive_errors` in a row the pipeline stops with PipelineError. Source errors
(SourceLost) stop it at once and are re-raised from `run()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..bundle import Manifest
from ..runtimes import ModelSession
from ..telemetry.pipeline_stats import PipelineStats
from .channels import CLOSED, EMPTY, BoundedChannel, Channel, LatestSlot, ReorderChannel
from .detection import DetectionConfigError
from .sinks import Sink, SinkError
from .sources import Source
from .observe import LiveSample, Observer, Observers
from .scheduling import resolve_priority, resolve_schedule, set_thread_priority
from .stages import FrameInput, Postprocessor, Prepared, Preprocessor, infer
from ..errors import AgentError

log = logging.getLogger(__name__)


class PipelineError(AgentError, RuntimeError):
    """The pipeline stopped because frames kept failing (one line with the last cause)."""

    code_name = "frames-failing"
    kind = "pipeline"


@dataclass
class PipelineSummary:
    frames: int
    captured: int
    dropped: int
    errors: int
    seconds: float
    fps: float
    policy: str
    stats: dict[str, Any]
    schedule: str = "threads"  # how the stages shared the cores (edge_agent.pipeline.scheduling)
    helper_priority: str = "normal"
    inference_threads: int = 0  # the runtime's threads per stream (0: its own default)
    streams: int = 1  # sessions inferring consecutive frames side by side
    decode_threads: int | None = None  # FFmpeg's decoding threads (video sources; sources.auto_decode_threads)
    interrupted: bool = False  # Ctrl-C ended the run: the CLI prints this summary, then exits 130

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Pipeline:
    """Run a bundle's session over a Source into Sinks. `run()` blocks; `stop()` ends it early."""

    def __init__(
        self,
        source: Source,
        session: ModelSession | Sequence[ModelSession],
        manifest: Manifest,
        sinks: Iterable[Sink] = (),
        stats: PipelineStats | None = None,
        policy: str | None = None,
        max_frames: int | None = None,
        queue_size: int = 2,
        top_k: int | None = None,
        max_consecutive_errors: int = 10,
        infer_fn: Callable[[ModelSession, dict], list] = infer,
        observers: Iterable[Observer] = (),
        schedule: str = "auto",
        helper_priority: str = "auto",
    ) -> None:
        self.source = source
        self.sessions = [session] if isinstance(session, ModelSession) else list(session)
        if not self.sessions:
            raise ValueError("the pipeline needs at least one session")
        self.session = self.sessions[0]
        self.manifest = manifest
        self.sinks = list(sinks)
        self.observers = Observers()  # e.g. the drift monitor: called per answered frame, after the sinks
        for o in observers:
            self.observers.add_observer(o)
        self.stats = stats or PipelineStats(source=source.description)
        self.policy = policy or ("latest" if source.live else "all")
        if self.policy not in ("latest", "all"):
            raise ValueError(f"policy must be 'latest' or 'all', not {self.policy!r}")
        self.max_frames = max_frames
        self.schedule = resolve_schedule(schedule, self.policy, len(self.sessions), helper_priority)
        self.helper_priority = resolve_priority(helper_priority)
        self.max_consecutive_errors = max_consecutive_errors
        self.preprocess = Preprocessor(manifest)
        self.postprocess = Postprocessor(manifest, top_k)
        self._infer = infer_fn
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._fatal_lock = threading.Lock()
        self._consecutive_errors = 0
        self._take = threading.Lock()  # a frame and its ticket are taken together (streams)
        self._tickets = 0
        self._failed = 0  # frames whose inference failed (they do not count towards max_frames)
        self._streams_left = len(self.sessions)
        self._delivering = threading.Lock()  # serial streams: one delivers at a time (_in_order)
        drop = lambda _item: self.stats.count_dropped()  # noqa: E731
        if self.policy == "latest":
            self.raw: Channel = LatestSlot(on_drop=drop)
            self.prepared: Channel = LatestSlot(on_drop=drop)
        else:
            self.raw = BoundedChannel(queue_size)
            self.prepared = BoundedChannel(queue_size)
        self.results = ReorderChannel(queue_size)

    # --- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop capturing; threads exit promptly (queued frames are abandoned)."""
        self._stop.set()
        for ch in (self.raw, self.prepared, self.results):
            ch.stop()

    def _fail(self, exc: BaseException) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = exc
        self.stop()

    def _frame_error(self, stage: str, exc: Exception) -> None:
        self.stats.count_error()
        self._consecutive_errors += 1
        log.warning("%s failed on a frame: %s", stage, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if self._consecutive_errors >= self.max_consecutive_errors:
            self._fail(PipelineError(f"{self._consecutive_errors} frames in a row failed in {stage}: {exc}"))

    # --- stages ----------------------------------------------------------------------------

    def _read(self) -> Any:
        """The next frame from the source (None at its end), timed and counted."""
        t0 = time.perf_counter()
        frame = self.source.read()
        if frame is not None:
            self.stats.add_latency("decode", _ms(t0))
            self.stats.count_captured()
        return frame

    def _prepare(self, frame: Any) -> Prepared | None:
        t0 = time.perf_counter()
        try:
            prepared = self.preprocess(frame)
        except Exception as exc:
            self._frame_error("preprocess", exc)
            return None
        prepared.timings["preprocess"] = _ms(t0)
        return prepared

    def _infer_one(self, prepared: Prepared, session: ModelSession) -> bool:
        prepared.stale_frames = max(0, self.source.frames_read - 1 - prepared.frame.index)
        t0 = time.perf_counter()
        try:
            prepared.outputs = self._infer(session, prepared.feeds)
        except Exception as exc:
            self._frame_error("inference", exc)
            return False
        prepared.timings["inference"] = _ms(t0)
        return True

    def _finish_one(self, prepared: Prepared) -> bool:
        """Postprocess one inferred frame and hand it to the sinks; False when the run must stop."""
        go, result = self._postprocess_one(prepared)
        return go and (result is None or self._deliver(prepared, result))

    def _postprocess_one(self, prepared: Prepared) -> tuple[bool, dict[str, Any] | None]:
        """(False, None) when the run must stop; (True, None) when this frame failed; else (True, result)."""
        t0 = time.perf_counter()
        try:
            result = self.postprocess(prepared.outputs or [], prepared.geometry)
        except DetectionConfigError as exc:  # the bundle's settings, not the frame: no later frame can work
            self._fail(exc)
            return False, None
        except Exception as exc:
            self._frame_error("postprocess", exc)
            return True, None
        prepared.timings["postprocess"] = _ms(t0)
        return True, result

    def _deliver(self, prepared: Prepared, result: dict[str, Any]) -> bool:
        """Hand a postprocessed frame to the sinks and observers; False when the run must stop."""
        e2e = (time.monotonic() - prepared.frame.captured_at) * 1000.0
        for stage in ("preprocess", "inference", "postprocess"):
            self.stats.add_latency(stage, prepared.timings[stage])
        self.stats.add_latency("end_to_end", e2e)
        record = {
            "frame": prepared.frame.index,
            **({"image": prepared.frame.name} if prepared.frame.name else {}),
            "time": round(time.time(), 3),
            "latency_ms": round(e2e, 3),
            "stale_frames": prepared.stale_frames,
            **result,
        }
        try:
            for sink in self.sinks:
                sink.write(record, prepared.frame)
        except SinkError as exc:  # the output cannot be written: stop with its code (73), not exit 0
            self._fail(exc)
            return False
        except Exception as exc:
            self._frame_error("sink", exc)
            return True
        self._consecutive_errors = 0
        self.stats.frame_done(prepared.stale_frames)
        self._observe(prepared, result)
        return True

    def _serial(self, session: ModelSession) -> None:
        """schedule 'serial': each frame decoded, preprocessed, inferred and postprocessed in turn on one thread.
        With N streams, N such threads, one per session, read frames in turn (a frame and its ticket together) and
        the sinks get them in ticket order (_in_order): nothing runs beside inference but other streams."""
        try:
            while not self._stop.is_set():
                with self._take:
                    if self.max_frames is not None and self._tickets >= self.max_frames:
                        break
                    frame = self._read()
                    if frame is None:
                        break
                    ticket, self._tickets = self._tickets, self._tickets + 1
                prepared = self._prepare(frame)
                done = None
                if prepared is not None and self._infer_one(prepared, session):
                    go, result = self._postprocess_one(prepared)
                    if not go:
                        break
                    done = None if result is None else (prepared, result)
                if not self._in_order(ticket, done):
                    break
        except BaseException as exc:
            self._fail(exc)

    def _in_order(self, ticket: int, done: tuple[Prepared, dict[str, Any]] | None) -> bool:
        """Deliver the frames of every ticket up to the first one still missing, in ticket order (None: a failed
        frame, skipped); whichever stream completes the sequence delivers. False when the run must stop."""
        with self._delivering:  # results are drained as they are released: put_at never waits here
            self.results.put_at(ticket, done)
            while (item := self.results.get(0)) is not EMPTY and item is not CLOSED:
                if not self._deliver(*item):
                    return False
        return True

    def _capture(self) -> None:
        try:
            set_thread_priority(self.helper_priority)
            n = 0
            while not self._stop.is_set():
                if self.policy == "all" and self.max_frames is not None and n >= self.max_frames:
                    break
                frame = self._read()
                if frame is None:
                    break
                n += 1
                if not self.raw.put(frame):
                    break
        except BaseException as exc:  # SourceLost and friends end the run
            self._fail(exc)
        finally:
            self.raw.close()

    def _preprocess(self) -> None:
        try:
            set_thread_priority(self.helper_priority)
            while True:
                frame = self.raw.get()
                if frame is CLOSED:
                    break
                if frame is EMPTY:
                    continue
                prepared = self._prepare(frame)
                if prepared is not None and not self.prepared.put(prepared):
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            self.prepared.close()

    def _next_prepared(self) -> tuple[Any, int]:
        """The next prepared frame and its ticket (CLOSED when there is none to come); EMPTY when none is ready."""
        with self._take:
            if (self.policy == "latest" and self.max_frames is not None
                    and self._tickets - self._failed >= self.max_frames):
                self._stop.set()  # enough frames: stop capturing, drain what is inferred
                return CLOSED, -1
            item = self.prepared.get()
            if item is CLOSED or item is EMPTY:
                return item, -1
            self._tickets += 1
            return item, self._tickets - 1

    def _inference(self, session: ModelSession) -> None:
        try:
            while True:
                item, ticket = self._next_prepared()
                if item is CLOSED:
                    break
                if item is EMPTY:
                    continue
                ok = self._infer_one(item, session)
                with self._take:
                    self._failed += not ok
                if not self.results.put_at(ticket, item if ok else None):
                    break
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self._take:
                self._streams_left -= 1
                if self._streams_left == 0:  # the last stream out closes the results
                    self.results.close()

    def _finish(self) -> None:
        try:
            set_thread_priority(self.helper_priority)
            while True:
                item = self.results.get()
                if item is CLOSED:
                    break
                if item is not EMPTY and not self._finish_one(item):
                    break
        except BaseException as exc:
            self._fail(exc)

    def _observe(self, prepared: Prepared, result: dict[str, Any]) -> None:
        if not self.observers:
            return
        self.observers.notify(LiveSample(FrameInput(prepared.frame), None, prepared.feeds, prepared.outputs or [],
                                         prepared.timings.get("inference", 0.0), result, prepared.geometry))

    # --- run -------------------------------------------------------------------------------

    def run(self) -> PipelineSummary:
        """Process the source to its end (or max_frames, or stop()); re-raises a fatal error."""
        started, interrupted = time.monotonic(), False
        stages = (tuple((f"serial{i or ''}", lambda s=s: self._serial(s)) for i, s in enumerate(self.sessions))
                  if self.schedule == "serial" else
                  (("capture", self._capture), ("preprocess", self._preprocess),
                   *((f"inference{i or ''}", lambda s=s: self._inference(s)) for i, s in enumerate(self.sessions)),
                   ("finish", self._finish)))
        threads = [threading.Thread(target=fn, name=f"pipeline-{name}", daemon=True) for name, fn in stages]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the pipeline")
            interrupted = True
            self.stop()
            deadline = time.monotonic() + 5.0  # for all of them: a stage stuck in a read must not hold Ctrl-C up
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - closing must not hide the run's outcome
                    log.warning("closing sink %s failed", type(sink).__name__, exc_info=True)
        if self._fatal is not None:
            raise self._fatal
        seconds, snap = time.monotonic() - started, self.stats.snapshot()
        return PipelineSummary(
            frames=snap["processed"], captured=snap["captured"], dropped=snap["dropped"], errors=snap["errors"],
            seconds=round(seconds, 3), fps=round(snap["processed"] / seconds, 3) if seconds > 0 else 0.0,
            policy=self.policy, stats=snap, schedule=self.schedule, helper_priority=self.helper_priority,
            inference_threads=self.session.info.threads, decode_threads=self.source.decode_threads,
            streams=len(self.sessions), interrupted=interrupted)
