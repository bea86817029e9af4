"""Where per-frame results go: JSON lines, MQTT telemetry, an annotated video, an MJPEG preview.

A Sink gets `write(record, frame)` for every processed frame (record: the JSON-able result,
frame: the original BGR frame) and `close()` at the end.
"""

from __future__ import annotations

import logging
import sys
import threading
from abc import ABC, abstractmethod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import numpy as np

from .sources import Frame
from ..finite_json import dumps
from ..errors import AgentError

log = logging.getLogger(__name__)


class SinkError(AgentError, RuntimeError):
    """An output cannot be opened or written (one line)."""

    code_name = "output"
    kind = "sink"


class Sink(ABC):
    @abstractmethod
    def write(self, record: dict[str, Any], frame: Frame) -> None:
        """Handle one processed frame."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release."""


class JsonLinesSink(Sink):
    """One JSON object per line, to a file or stdout ('-')."""

    def __init__(self, target: str | Path = "-") -> None:
        self.target = str(target)
        if self.target == "-":
            self._f: IO[str] = sys.stdout
            self._own = False
        else:
            try:
                self._f = open(self.target, "w", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"cannot write results to {self.target}: {exc.strerror}") from exc
            self._own = True

    def write(self, record: dict[str, Any], frame: Frame) -> None:
        self._f.write(dumps(record, separators=(",", ":")) + "\n")  # a NaN score: null, not bare NaN
        self._f.flush()

    def close(self) -> None:
        if self._own:
            self._f.close()


class CollectSink(Sink):
    """Keeps records in memory (library use and tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any], frame: Frame) -> None:
        self.records.append(record)


def annotate(image: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """A copy of the BGR frame with the detections' boxes or the top class drawn on it."""
    import cv2

    out = image.copy()
    if record.get("kind") == "detection":
        for det in record.get("detections", []):
            x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
            cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 2)
            cv2.putText(out, f"{det['name']} {det['score']:.2f}", (x1, max(12, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
    elif record.get("kind") == "classification":
        cv2.putText(out, f"{record['name']} {record['score']:.2f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 0), 1, cv2.LINE_AA)
    return out


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The annotated frame letterboxed into the video's size (w, h): OpenCV's writer silently drops a frame of
    another size, so an image folder's differently sized images were missing from the video."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == size:
        return image
    scale = min(size[0] / w, size[1] / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = (size[0] - nw) // 2, (size[1] - nh) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


class AnnotatedVideoSink(Sink):
    """Writes annotated frames to a video file (codec from the suffix: .mp4 mp4v, .avi MJPG)."""

    def __init__(self, path: str | Path, fps: float = 15.0) -> None:
        self.path = Path(path)
        self.fps = fps
        self._writer = None
        self._size = (0, 0)
        if not self.path.parent.is_dir():  # OpenCV would fail silently on every frame
            raise SinkError(f"cannot write video {self.path}: folder {self.path.parent} does not exist")
        if self.path.is_dir():  # OpenCV only answers "not opened", after the first frame's inference
            raise SinkError(f"cannot write video {self.path}: it is a folder (give a file: out.mp4 or out.avi)")

    def write(self, record: dict[str, Any], frame: Frame) -> None:
        import cv2

        if self._writer is None:
            h, w = frame.image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                if self.path.suffix.lower() in (".mp4", ".avi"):  # e.g. mp4v refuses a 1x1 first image
                    raise SinkError(f"cannot write video {self.path}: OpenCV cannot encode {w}x{h} frames as "
                                    f"{self.path.suffix} (try .avi)")
                kind = self.path.suffix or "a name without a suffix"
                raise SinkError(f"cannot write video {self.path} (OpenCV has no writer for {kind}: use .mp4 or .avi)")
            self._size = (w, h)
        self._writer.write(_fit(annotate(frame.image, record), self._size))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class MjpegPreviewSink(Sink):
    """Serves the newest annotated frame as an MJPEG stream at http://HOST:PORT/ (localhost by default)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, quality: int = 80) -> None:
        self._jpeg: bytes | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.quality = quality
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                last = None
                try:
                    while True:
                        with sink._cond:
                            while (sink._jpeg is last) and not sink._closed:
                                sink._cond.wait(1.0)
                            if sink._closed:
                                return
                            last = sink._jpeg
                        assert last is not None
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(last)).encode() + b"\r\n\r\n" + last + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("preview: " + fmt, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise SinkError(f"cannot serve the preview on {host}:{port}: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="mjpeg-preview", daemon=True)
        self._thread.start()
        # port 0 (any free port) is only usable when the user is told which one: not just with -v
        log.log(logging.WARNING if port == 0 else logging.INFO, "MJPEG preview on http://%s:%d/", self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, image: np.ndarray) -> None:
        """Serve this BGR image as the newest frame."""
        import cv2

        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            with self._cond:
                self._jpeg = buf.tobytes()
                self._cond.notify_all()

    def write(self, record: dict[str, Any], frame: Frame) -> None:
        self.publish(annotate(frame.image, record))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


class TelemetrySink(Sink):
    """Hands per-frame results to an MqttTelemetryReporter (which publishes on its own timer)."""

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def write(self, record: dict[str, Any], frame: Frame) -> None:
        self.reporter.add_result(record)

    def close(self) -> None:
        self.reporter.close()
