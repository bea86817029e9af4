"""Frame sources for the camera pipeline: V4L2 cameras, RTSP/HTTP streams, video files, images.

`open_source(spec)` turns a user's `--source` string into a `Source`. Every source yields
`Frame`s (BGR uint8, as OpenCV decodes) with a running index that counts every frame the
source produced, so the pipeline can tell how stale a frame is when it gets inferred.

Live sources (cameras, stream URLs) reconnect with bounded exponential back-off when they drop
out mid-stream and raise `SourceLost` when the budget is spent; nothing here blocks forever
(OpenCV's open/read timeouts are set where the backend supports them).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import AgentError
from .inputs import OPENCV_IMAGE_SUFFIXES

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_DEVICE_RE = re.compile(r"^/dev/video(\d+)$")


class SourceError(AgentError, RuntimeError):
    """A frame source cannot be used (one line, says which source and why)."""

    code_name = "source-open"
    kind = "source"


class SourceOpenError(SourceError):
    """The camera, stream, file or folder could not be opened."""

    code_name = "source-open"
    kind = "source-open"


class SourceLost(SourceError):
    """A live source dropped out and did not come back within the reconnect budget."""

    code_name = "source-lost"
    kind = "source-lost"


@dataclass
class Frame:
    """One decoded frame: BGR HxWx3 uint8, its index in the source and when it was captured."""

    index: int
    image: np.ndarray
    captured_at: float  # time.monotonic() when the source handed it out
    name: str | None = None  # file name for image folders / single images


@dataclass(frozen=True)
class ReconnectPolicy:
    """Bounded exponential back-off for live sources: delays initial, initial*factor, ... <= max_delay."""

    max_attempts: int = 6
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0
    max_total: float = 60.0  # seconds spent reconnecting before giving up

    def delays(self) -> list[float]:
        out, d, total = [], self.initial_delay, 0.0
        for _ in range(self.max_attempts):
            if total + d > self.max_total:
                break
            out.append(d)
            total += d
            d = min(d * self.factor, self.max_delay)
        return out


class Source(ABC):
    """A stream of frames. `live` sources may drop frames; others must deliver every frame."""

    live: bool = False
    description: str = ""
    fps: float | None = None
    decode_threads: int | None = None  # FFmpeg's decoding threads (capture sources), None where nothing decodes

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the source. Raises SourceLost for dead live sources."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or file."""

    @property
    def frames_read(self) -> int:
        return getattr(self, "_count", 0)

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cv2() -> Any:
    """Import OpenCV, keeping FFmpeg's and OpenCV's own console chatter quiet unless debugging."""
    if not logging.getLogger("edge_agent").isEnabledFor(logging.DEBUG):
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    import cv2

    if not logging.getLogger("edge_agent").isEnabledFor(logging.DEBUG):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


def _capture_params(cv2: Any, open_timeout_ms: int, read_timeout_ms: int, decode_threads: int | None = None) -> list[int]:
    params: list[int] = []
    for name, value in (("CAP_PROP_OPEN_TIMEOUT_MSEC", open_timeout_ms), ("CAP_PROP_READ_TIMEOUT_MSEC", read_timeout_ms),
                        ("CAP_PROP_N_THREADS", decode_threads)):
        if value is None:
            continue
        prop = getattr(cv2, name, None)
        if prop is not None:
            params += [int(prop), int(value)]
    return params


class CaptureSource(Source):
    """A cv2.VideoCapture-backed source (camera, stream URL or video file)."""

    def __init__(
        self,
        target: str | int,
        live: bool,
        description: str,
        reconnect: ReconnectPolicy | None = None,
        open_timeout_ms: int = 10000,
        read_timeout_ms: int = 10000,
        sleep: Callable[[float], None] = time.sleep,
        decode_threads: int | None = None,
    ) -> None:
        cv2 = self._cv2 = _cv2()
        self.target = target
        self.live = live
        self.description = description
        self.reconnect = reconnect or ReconnectPolicy()
        self._params = _capture_params(cv2, open_timeout_ms, read_timeout_ms, decode_threads)
        self._sleep = sleep
        self._reading = threading.Lock()
        self._count = 0
        self.reconnects = 0
        self._cap = self._open()
        if self._cap is None:
            raise SourceOpenError(f"cannot open video source {description}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None
        threads = int(self._cap.get(getattr(cv2, "CAP_PROP_N_THREADS", -1)) or 0)
        self.decode_threads = threads if threads > 0 else None

    def _open(self) -> Any | None:
        cv2 = self._cv2
        if isinstance(self.target, int):
            backend = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY)
        else:
            backend = cv2.CAP_FFMPEG
        try:
            cap = cv2.VideoCapture(self.target, backend, self._params)
        except cv2.error as exc:  # bad params on some backends: retry plain
            log.debug("VideoCapture with params failed (%s); retrying without", exc)
            cap = cv2.VideoCapture(self.target, backend)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def read(self) -> Frame | None:
        with self._reading:  # close() from another thread waits for the read in flight (VideoCapture is not thread-safe)
            return self._read()

    def _read(self) -> Frame | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            if not self.live:
                return None
            self._reconnect()
            ok, image = self._cap.read()
            if not ok or image is None:
                raise SourceLost(f"live source {self.description} reconnected but gives no frames")
        if image.ndim == 2:
            image = image[:, :, None].repeat(3, axis=2)
        frame = Frame(self._count, image, time.monotonic())
        self._count += 1
        return frame

    def _reconnect(self) -> None:
        log.warning("live source %s dropped out; reconnecting", self.description)
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        started = time.monotonic()
        delays = self.reconnect.delays()
        for attempt, delay in enumerate(delays, 1):
            self._sleep(delay)
            self._cap = self._open()
            if self._cap is not None:
                self.reconnects += 1
                log.warning("reconnected to %s after %d attempt(s)", self.description, attempt)
                return
            log.info("reconnect attempt %d/%d to %s failed", attempt, len(delays), self.description)
        raise SourceLost(
            f"live source {self.description} dropped out and did not come back after {len(delays)} attempts "
            f"({time.monotonic() - started:.1f} s)"
        )

    def close(self) -> None:
        """Release the capture; a read still in flight after its timeout (a stalled stream at Ctrl-C) keeps it and
        the process's exit frees it: releasing under a read crashed or hung in FFmpeg."""
        if not self._reading.acquire(timeout=2.0):
            log.debug("source %s: a read is still in flight; leaving the capture to the process exit", self.description)
            return
        try:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
        finally:
            self._reading.release()


class ImageFilesSource(Source):
    """A single image or a folder of images (sorted by name), each read once."""

    def __init__(self, files: list[Path], description: str) -> None:
        self._cv2 = _cv2()
        self.files = files
        self.description = description
        self._count = 0
        self.skipped: list[str] = []

    def read(self) -> Frame | None:
        while self._count < len(self.files):
            path = self.files[self._count]
            image = self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)
            if image is None:  # one damaged file (a truncated camera JPEG) does not end a folder's run
                self._count += 1
                self.skipped.append(path.name)
                log.warning("%s is not a readable image: skipped", path)
                continue
            frame = Frame(self._count, image, time.monotonic(), name=path.name)
            self._count += 1
            return frame
        if self.skipped and len(self.skipped) == len(self.files):
            raise SourceOpenError(f"{self.files[0]} is not a readable image" if len(self.files) == 1 else
                                  f"none of the {len(self.files)} images of {self.description} is readable")
        return None


def open_source(
    spec: str | int,
    reconnect: ReconnectPolicy | None = None,
    open_timeout_ms: int = 10000,
    read_timeout_ms: int = 10000,
    decode_threads: int | None = None,
    file_decode_threads: int | None = None,
) -> Source:
    """A Source for `spec`: /dev/videoN or an index, rtsp/http URL, video file, image folder or image.

    decode_threads: FFmpeg's decoding threads for every capture source (None: its own choice, one per core);
    file_decode_threads: the same for video files only, when decode_threads is None (auto_decode_threads).
    Raises SourceOpenError (exit code 70) with a one-line reason when it cannot be opened.
    """
    text = str(spec).strip()
    if not text:
        raise SourceOpenError("empty --source")
    kwargs = dict(reconnect=reconnect, open_timeout_ms=open_timeout_ms, read_timeout_ms=read_timeout_ms,
                  decode_threads=decode_threads)
    m = _DEVICE_RE.match(text)
    if text.isdigit() or m:
        index = int(m.group(1) if m else text)
        if m and not Path(text).exists():
            raise SourceOpenError(f"camera {text} does not exist (no such device)")
        return CaptureSource(index, live=True, description=f"camera {text}", **kwargs)
    if text.lower().startswith(STREAM_SCHEMES):
        return CaptureSource(text, live=True, description=_redact(text), **kwargs)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in OPENCV_IMAGE_SUFFIXES)
        if not files:
            raise SourceOpenError(f"image folder {path} has no image files ({', '.join(sorted(OPENCV_IMAGE_SUFFIXES))})")
        return ImageFilesSource(files, f"image folder {path} ({len(files)} images)")
    if not path.exists():
        raise SourceOpenError(f"video source {path} does not exist")
    if not path.is_file():
        raise SourceOpenError(f"video source {path} is not a regular file or folder")
    if path.suffix.lower() in OPENCV_IMAGE_SUFFIXES:
        return ImageFilesSource([path], f"image {path}")
    if decode_threads is None:
        kwargs["decode_threads"] = file_decode_threads
    try:
        return CaptureSource(str(path), live=False, description=f"video file {path}", **kwargs)
    except SourceOpenError:
        raise SourceOpenError(f"cannot decode video file {path} (not a video, or a codec OpenCV lacks)") from None


def auto_decode_threads(inference_threads: int) -> int | None:
    """FFmpeg threads for a video file beside a model on `inference_threads` threads: 1 when inference already
    fills every core (FFmpeg's frame threads then only add threads that wake per frame and preempt the runtime's,
    for more CPU per frame: docs/detection.md), else None (FFmpeg's choice). Live sources keep FFmpeg's choice:
    a high-resolution stream may need more than one thread to keep pace with its camera."""
    return 1 if inference_threads >= (os.cpu_count() or 1) else None


def _redact(url: str) -> str:
    """A stream URL without its password, for logs and errors."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
