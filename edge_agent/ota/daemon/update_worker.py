"""The update worker: one thread running the install state machine on the newest desired state.

Jobs come from the desired-state handler (or a resume after a restart); only the newest
queued one runs, a newer one cancels the running one. The worker fetches the bundle (MQTT
blocks through the link, or HTTP) and hands the switched model to `on_switch`.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Callable

from ...home import AgentHome
from ...runtimes import ModelSession
from ..installer import InstallContext, abandon, install_lock, run_update, staging_dir
from ..job import UpdateJob
from ..phases import Phase
from ..damage import fetch_blocks
from ..states import download_budget
from ..protocol import dumps
from ..slots import SlotInfo
from ..states import ShadowRunner
from ..http_fetch import http_download
from ..transfer import BlockDownloader, TransferStats, clean_staging
from .config import AgentConfig
from .current_job import CurrentJob
from .mqtt_link import MessageIgnored, MqttLink

log = logging.getLogger(__name__)


class UpdateWorker:
    """Runs one update at a time (under `busy` and the home's install lock)."""

    def __init__(self, home: AgentHome, config: AgentConfig, jobs: CurrentJob, link: MqttLink,
                 on_switch: Callable[[SlotInfo, ModelSession | None], None], busy: threading.Lock,
                 shadow: ShadowRunner | None = None) -> None:
        self.home, self.config, self.jobs, self.link, self.on_switch = home, config, jobs, link, on_switch
        self.shadow = shadow  # runs a deployment's shadow gate on live inputs (None: none to watch)
        self.busy = busy  # held while a job runs
        self.downloader: BlockDownloader | None = None  # the MQTT download in progress
        self.last_downloader_stats: TransferStats | None = None
        self._claimed: dict[str, list[bytes | None]] = {}  # the last download's frame-claimed block hashes
        self._ctx: InstallContext | None = None
        self._jobs: queue.Queue[UpdateJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="update-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.cancel.set()
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def submit(self, job: UpdateJob) -> None:
        """Queue `job`; a running update is cancelled (a newer deployment supersedes it)."""
        if self._ctx is not None:
            log.info("newer deployment %s supersedes the running update", job.deployment_id)
            self._ctx.cancel.set()
        self._jobs.put(job)

    def resume(self) -> None:
        """Finish (or abandon) a job a previous run left unfinished; drop staging files nobody resumes."""
        job = self.jobs.job
        clean_staging(staging_dir(self.home), job.ref.sha256 if job is not None else None)
        if job is None or not job.phase.is_unfinished:
            return
        log.warning("resuming update %s in phase %s after a restart", job.deployment_id, job.phase)
        if job.origin == "file" and job.phase is Phase.DOWNLOADING:  # the daemon cannot re-copy a side-loaded file
            with self.busy:
                abandon(self._context(job), "side-loaded install was interrupted while copying the file: run it again")
            return
        self._jobs.put(job)

    def on_block_frame(self, payload: bytes | memoryview) -> bool:
        """A blocks/data frame for the download in progress (False: the downloader refused it)."""
        dl = self.downloader
        if dl is None:
            raise MessageIgnored("block frame with no download in progress")
        return dl.on_frame(payload)

    def reconnected(self) -> None:
        if self.downloader is not None:
            self.downloader.reconnected()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            while job is not None and not self._jobs.empty():  # only the newest desired state matters
                job = self._jobs.get()
            if job is None:
                return
            try:
                with self.busy, install_lock(self.home):
                    self._run_job(job)
            except Exception:  # noqa: BLE001 - the worker outlives any one job (disk full, a bug): later deployments still run
                log.exception("update %s ended with an unexpected error", job.deployment_id)
                self._give_up(job)

    def _give_up(self, job: UpdateJob) -> None:
        """Report what went wrong with a job the runner could not finish (a restart resumes it)."""
        job.last_error, job.error_kind, job.exit_code = "unexpected error: see the agent log", "error", 1
        self.jobs.show(job)

    def _context(self, job: UpdateJob) -> InstallContext:
        return InstallContext(
            home=self.home, trust=self.config.trust, profile_name=self.config.profile_name,
            latency_budget_ms=self.config.latency_budget_ms, job=job, fetch=self._fetch,
            on_switch=self.on_switch, report=self.jobs.show, threads=self.config.threads, shadow=self.shadow,
            profile_limits=self.config.profile_limits,
        )

    def _run_job(self, job: UpdateJob) -> None:
        self.jobs.job = job
        ctx = self._ctx = self._context(job)
        try:
            run_update(ctx)
        finally:
            self._ctx = None
        if self.jobs.job is job and job.phase is Phase.FAILED:
            log.warning("update %s failed: %s", job.deployment_id, job.last_error)

    def _fetch(self, ctx: InstallContext) -> Path:
        desired = ctx.job.desired_state
        progress = self._progress_reporter(ctx.job)
        if desired.source.get("type") == "http":
            return http_download(desired.source["url"], staging_dir(self.home), desired.bundle.sha256, desired.size,
                                 cancel=ctx.cancel, progress=progress, cafile=self.config.tls_ca)
        budget = download_budget(self.config.profile_name, self.config.profile_limits)
        dl = BlockDownloader(
            staging_dir(self.home), desired.bundle.sha256, desired.size, desired.block_size,
            send_request=lambda req: self.link.publish(self.link.topics.block_request, dumps(req)),
            is_connected=self.link.connected.is_set, cancel=ctx.cancel, retry_timeout_s=self.config.block_retry_s,
            progress=progress, ota_dir=self.home.ota_dir, block_digests=desired.block_digests(),
            recheck=ctx.job.check_blocks, claimed=self._claimed.get(desired.bundle.sha256),
            **({"window": budget.window(desired.block_size)} if budget is not None else {}),
        )
        self.downloader = dl
        try:
            path = fetch_blocks(dl, ctx.job)
            # without the deployment's block list, the hashes the frames claimed, for a re-check (memory only)
            self._claimed = {desired.bundle.sha256: dl.claimed} if dl.claimed is not None else {}
            return path
        finally:
            self.downloader = None
            self.last_downloader_stats = dl.stats
            dl.close()

    def _progress_reporter(self, job: UpdateJob) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            job.progress = fraction
            self.jobs.report()
        return report
