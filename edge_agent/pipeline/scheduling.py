"""How the pipeline shares the cores with the runtime's inference threads.

Hypothesis behind the options: on a host with as many cores as inference threads (a 2-core box running 2
XNNPACK / ONNX Runtime threads), a decode thread at the same priority preempts one inference thread; every parallel
op then waits at its barrier for it, so a millisecond of decoding could cost a millisecond of *both* cores. Options:

  * schedule ``serial``: one thread decodes, preprocesses, infers and postprocesses each frame in turn (no
    overlap, nothing preempts inference); files only; with N streams, N such threads (the default for files);
  * schedule ``threads`` (the default) with the helper threads (capture, preprocess, postprocess + sinks) at
    ``normal`` priority (the default), ``low`` (nice +10) or ``idle`` (SCHED_IDLE: only on an otherwise idle core).

Measured on 2 cores (docs/detection.md, "Pipeline vs bare loop"): none beat the defaults beyond the noise of a shared
host; they stay as options. What did: inference *streams* (resolve_streams): N sessions of threads/N threads each
work on consecutive frames, so no operator waits at a barrier for a thread that a helper preempted. Priorities are per thread on Linux (`setpriority(PRIO_PROCESS, tid)` and
`sched_setscheduler(tid)` act on one task); lowering them needs no privilege. Where that fails (not Linux, a sandbox)
the thread keeps its priority and an info line says so.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


class ScheduleError(ValueError):
    """A schedule or priority this source cannot take (the CLI turns it into a usage error, exit 2)."""


SCHEDULES = ("auto", "threads", "serial")
PRIORITIES = ("auto", "normal", "low", "idle")
LOW_NICE = 10  # "low": nice +10 over the process, i.e. ~1/10 of a nice-0 thread's CPU share when contended


def resolve_schedule(schedule: str, policy: str, streams: int = 1, helper_priority: str = "auto") -> str:
    """'auto' -> 'serial' for files and folders inferred by several streams, else 'threads'. With N streams on N
    cores the other streams keep the cores busy while one decodes, so overlapping the stages buys nothing and the
    hand-overs cost CPU: 0.7 ms a frame of YOLOv8n's ~3.5 (context switches, cold caches; docs/detection.md,
    "Serial streams"). One stream needs the helper threads to overlap decoding with inference, and a helper priority
    asked for (low, idle) needs helper threads to apply to. 'serial' is refused
    for the 'latest' policy: a live camera must be drained while the model runs, or its buffered frames go stale."""
    if schedule not in SCHEDULES:
        raise ScheduleError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if schedule == "serial" and policy == "latest":
        raise ScheduleError("schedule 'serial' needs policy 'all': a live source must be read while the model runs")
    if schedule == "auto":
        serial = policy == "all" and streams > 1 and helper_priority in ("auto", "normal")
        return "serial" if serial else "threads"
    return schedule


STREAM_MEMORY_FACTOR = 3  # a session's resident memory per byte of model file (weights, prepacked copies, arena)


def memory_streams(model_bytes: int, available: int | None) -> int | None:
    """How many sessions of a `model_bytes` model fit in half the available memory (None: unknown, no cap), so
    `auto` never loads a model per core on a board that cannot hold them (a Pi Zero 2 W has 4 cores, 512 MB)."""
    if available is None or model_bytes <= 0:
        return None
    return max(1, (available // 2) // (STREAM_MEMORY_FACTOR * model_bytes))


def resolve_streams(streams: str | int, policy: str, threads: int, frames: int | None = None,
                    memory_cap: int | None = None) -> tuple[int, int]:
    """(streams, threads per stream) for `threads` inference threads in all. 'auto': files and folders (policy
    'all', every frame processed: throughput is what counts) get one single-threaded session per thread, as
    OpenVINO's THROUGHPUT hint and DeepStream do; live sources (policy 'latest') get one session on every thread,
    because a frame on one thread takes N times as long: N streams would add up to a frame of latency for
    throughput a camera rarely needs; never more than `frames` when the source knows its count (one image: one
    session, not a model loaded per core) nor than `memory_cap` (memory_streams). A number N: N sessions,
    threads // N threads each (at least one); the user's N is taken as given."""
    threads = max(1, int(threads))
    if streams == "auto":
        n = max(1, min(threads, frames or threads, memory_cap or threads)) if policy == "all" else 1
    else:
        try:
            n = int(streams)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ScheduleError(f"streams must be 'auto' or a whole number >= 1, not {streams!r}")
    return n, max(1, threads // n)


def resolve_priority(priority: str) -> str:
    """'auto' -> 'normal' (until measured otherwise: docs/detection.md)."""
    if priority not in PRIORITIES:
        raise ScheduleError(f"helper_priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    if priority != "auto":
        return priority
    return "normal"


def set_thread_priority(priority: str) -> bool:
    """Lower the calling thread's priority: 'normal' (leave it), 'low' (nice +LOW_NICE) or 'idle' (SCHED_IDLE:
    runs only when a core has nothing else to do). True when applied."""
    if priority in ("auto", "normal"):
        return True
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOW_NICE))
        return True
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it: run at normal priority
        log.info("could not set %s priority on pipeline thread %d: %s", priority, tid, exc)
        return False
