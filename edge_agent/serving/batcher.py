"""A dynamic batcher: a bounded queue in front of a few worker threads that run the served model.

Requests wait at most `max_delay_ms` for company when the model takes a dynamic batch axis; their
inputs are stacked, run once, and the outputs split back. A model with a fixed batch (or max_batch 1)
has nothing to gain from a hand-over to a worker thread, which costs two thread switches per request
(milliseconds on a loaded CPU): its requests run on their own thread once one of `workers` slots is
free, under the same bound. Either way at most `queue_size` requests wait; one more is refused at once
(503) instead of growing: the device's memory and the camera pipeline come first. Each run takes the
served model once (`ModelHolder.use`), so it runs entirely on one model even when an update swaps it;
a request whose feeds were made for the model an update just replaced (an ONNX NCHW model swapped for
a TFLite NHWC one between the request's check and its run) has them made again for the model it runs on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from ..bundle import Manifest
from ..errors import one_line
from ..pipeline.inputs import InputError
from .errors import BadRequest, HttpError, InferenceFailed, Unavailable
from .holder import ModelHolder, Served
from .tensors import batchable

log = logging.getLogger(__name__)


class Prepared(NamedTuple):
    """A request's runtime feeds for one model, its batch size, and what the answer needs (an image's geometry)."""

    feeds: dict[str, np.ndarray]
    batch: int
    context: Any = None


Prepare = Callable[[Manifest], Prepared]  # the client's input -> feeds for a model (raises BadRequest)


@dataclass
class Job:
    """One request's feeds (made for the model `generation`), waiting for its outputs."""

    prepared: Prepared
    generation: int
    prepare: Prepare
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    model: Served | None = None
    error: Exception | None = None
    run_ms: float = 0.0  # the model run that answered it (shared with the rest of its batch)

    def finish(self, model: Served | None, outputs: list[np.ndarray] | None = None,
               error: Exception | None = None, run_ms: float = 0.0) -> None:
        self.model, self.outputs, self.error, self.run_ms = model, outputs, error, run_ms
        self.done.set()

    @property
    def batch(self) -> int:
        return self.prepared.batch

    def prepare_for(self, model: Served) -> bool:
        """Make the feeds again if they were made for another model; False (and finished) if that fails."""
        if self.generation == model.generation:
            return True
        try:
            self.prepared, self.generation = self.prepare(model.manifest), model.generation
            return True
        except Exception as exc:  # noqa: BLE001 - the new model refuses this input: the request's own answer
            self.finish(model, error=exc if isinstance(exc, HttpError) else BadRequest(one_line(exc)))
            return False


class Answer(NamedTuple):
    """A request's outputs, the model that gave them, how long its model run took, and the feeds it ran."""

    outputs: list[np.ndarray]
    model: Served
    run_ms: float
    prepared: Prepared


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are grouped and bounded."""

    max_batch: int = 8  # rows per run when the model takes a dynamic batch axis
    max_delay_ms: float = 2.0  # how long the first request of a batch waits for others
    queue_size: int = 64  # requests waiting; one more gets 503
    workers: int = 1  # threads running the model (a LiteRT session serialises them anyway)


class DynamicBatcher:
    """`submit(prepare)` blocks until the outputs are ready; raises HttpError on failure."""

    def __init__(self, holder: ModelHolder, policy: BatchPolicy = BatchPolicy(),
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.holder, self.policy, self.on_batch = holder, policy, on_batch
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, policy.queue_size))
        self._slots = threading.BoundedSemaphore(max(1, policy.workers))  # model runs on request threads
        self._waiting = 0  # request threads waiting for a slot
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"serving-{i}", daemon=True)
                         for i in range(max(1, policy.workers))]
        for t in self._threads:
            t.start()

    def depth(self) -> int:
        """Requests waiting for the model (queued for a batch or for a slot)."""
        return self._queue.qsize() + self._waiting

    def submit(self, prepare: Prepare, timeout_s: float = 60.0) -> Answer:
        """Run one request: `prepare` makes its feeds for the served model (again, if an update swaps it)."""
        model = self.holder.current
        if model is None:
            raise Unavailable("no model is being served yet")
        job = Job(prepare(model.manifest), model.generation, prepare)  # a bad request fails here, before queueing
        if self.policy.max_batch <= 1 or not batchable(model.manifest):
            return self._run_here(job, timeout_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Unavailable(f"server busy: {self.policy.queue_size} requests already waiting, retry later") from None
        if not job.done.wait(timeout_s):
            raise Unavailable(f"no answer within {timeout_s:.0f} s")
        if job.error is not None:
            raise job.error
        assert job.outputs is not None and job.model is not None
        return Answer(job.outputs, job.model, job.run_ms, job.prepared)

    def close(self) -> None:
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout=5)

    def _run_here(self, job: Job, timeout_s: float) -> Answer:
        """Run on the caller's thread once a slot is free (a model that cannot batch)."""
        with self._lock:
            if self._waiting >= self.policy.queue_size:
                raise Unavailable(f"server busy: {self.policy.queue_size} requests already waiting, retry later")
            self._waiting += 1
        try:
            if not self._slots.acquire(timeout=timeout_s):
                raise Unavailable(f"no answer within {timeout_s:.0f} s")
        finally:
            with self._lock:
                self._waiting -= 1
        try:
            with self.holder.use() as model:
                if model is None:
                    raise Unavailable("no model is being served yet")
                self._run(model, [job])
            if job.error is not None:
                raise job.error
            assert job.outputs is not None
            return Answer(job.outputs, model, job.run_ms, job.prepared)
        finally:
            self._slots.release()

    # --- worker side -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self.holder.use() as model:
                if model is None:
                    job.finish(None, error=Unavailable("no model is being served yet"))
                    continue
                jobs = self._gather(job) if self.policy.max_batch > 1 and batchable(model.manifest) else [job]
                self._run(model, jobs)

    def _gather(self, first: Job) -> list[Job]:
        """More queued jobs to run with `first`, until max_batch rows or max_delay_ms."""
        jobs, rows = [first], first.batch
        deadline = time.perf_counter() + self.policy.max_delay_ms / 1000.0
        while rows < self.policy.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: hand the sentinel back to some worker
                self._queue.put(None)
                break
            jobs.append(job)
            rows += job.batch
        return jobs

    def _run(self, model: Served, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.prepare_for(model)]
        if len(jobs) > 1:
            try:
                stacked = {k: np.concatenate([j.prepared.feeds[k] for j in jobs], axis=0) for k in jobs[0].prepared.feeds}
                t0 = time.perf_counter()
                outputs = model.session.run(stacked)
                run_ms = (time.perf_counter() - t0) * 1000.0
                if all(o.ndim and o.shape[0] == sum(j.batch for j in jobs) for o in outputs):
                    self._count(sum(j.batch for j in jobs))
                    start = 0
                    for j in jobs:
                        j.finish(model, [o[start:start + j.batch] for o in outputs], run_ms=run_ms)
                        start += j.batch
                    return
            except Exception as exc:  # noqa: BLE001 - fall back to one run per request, which reports its own error
                log.debug("batched run failed (%s): running the requests one by one", one_line(exc))
        for j in jobs:
            try:
                t0 = time.perf_counter()
                outputs = model.session.run(j.prepared.feeds)
                run_ms = (time.perf_counter() - t0) * 1000.0
                self._count(j.batch)
                j.finish(model, outputs, run_ms=run_ms)
            except Exception as exc:  # noqa: BLE001 - one request's failure is its own answer
                err = exc if isinstance(exc, HttpError) else \
                    BadRequest(one_line(exc)) if isinstance(exc, InputError) else \
                    InferenceFailed(f"inference failed: {one_line(exc)}")  # the runtime's own fault: 500
                j.finish(model, error=err)

    def _count(self, rows: int) -> None:
        if self.on_batch is not None:
            self.on_batch(rows)

