"""The HTTP side: one stdlib ThreadingHTTPServer (HTTP/1.1 keep-alive) in front of the protocol adapters.

Why the standard library: the agent runs on a Pi with light dependencies, the telemetry `/metrics`
server already uses `http.server`, and the work per request is small next to the model's; an ASGI
stack (uvicorn + a framework) would add several packages for no measured gain (scripts/bench_serve.py).

Safe by default: binds 127.0.0.1; an optional bearer token (constant-time compare); a body over the
limits is refused with 413 before it is read; every malformed request gets a 4xx with one line in
{"error": ...}, and nothing a request does can stop the server, the camera pipeline or an update.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from ..errors import one_line
from ..telemetry.serving_stats import ServingStats
from .errors import HttpError, MethodNotAllowed, NotFound, ServingPortError, Unauthorized
from .http_body import ClientGone, read_body, refusal
from .protocols import ADAPTERS
from .protocols.base import ProtocolAdapter, Request, Response
from .protocols.kserve_v2 import HEADER_LENGTH
from .service import InferenceService

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class HttpOptions:
    """Where and to whom the endpoint answers."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # when set, every request needs `Authorization: Bearer TOKEN`
    max_json_bytes: int = 8 * MB  # a JSON body, or the JSON header of a binary KServe request
    max_body_bytes: int = 64 * MB  # a whole body with binary tensors or an image
    read_timeout_s: float = 30.0  # a client that stops sending mid-body, or whose request head takes longer, is dropped
    max_connections: int = 64  # open connections (a thread each); one more gets 503 at once


class ServingServer:
    """Serves the InferenceService over HTTP until `close()`; `url` tells where (port 0 = a free port)."""

    def __init__(self, service: InferenceService, options: HttpOptions = HttpOptions()) -> None:
        self.service, self.options = service, options
        self.adapters: list[ProtocolAdapter] = [cls(service) for cls in ADAPTERS]
        self._routes = [(method, pattern, handler, a) for a in self.adapters for method, pattern, handler in a.routes()]
        self._registry: Any = None
        handler = _handler_class(self)
        try:
            self._httpd = _BoundedHTTPServer((options.host, options.port), handler, options.max_connections)
        except OSError as exc:
            raise ServingPortError(f"cannot serve inference on {options.host}:{options.port}: {exc.strerror or exc}") from exc
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="serving-http", daemon=True)
        self._thread.start()
        log.info("inference endpoint on %s (KServe v2 under /v2, TF Serving under /v1, metrics on /metrics)", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> ServingStats:
        return self.service.stats

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- request handling (called on the connection's thread) ----------------------------------

    def dispatch(self, req: Request) -> tuple[Response, str]:
        """(response, protocol label) for a parsed request; never raises."""
        protocol = "other"
        try:
            self.authorize(req.headers)
            if req.path == "/metrics" and req.method == "GET":
                return self._metrics(), protocol
            for method, pattern, handler, adapter in self._routes:
                m = pattern.fullmatch(req.path)
                if m is not None and method == req.method:
                    protocol = adapter.name
                    return handler(req, m), protocol
            return self._other_method(req), protocol
        except HttpError as exc:
            return error_response(exc), protocol
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            log.warning("request %s %s failed: %s", req.method, req.path, one_line(exc), exc_info=log.isEnabledFor(logging.DEBUG))
            return Response.of_json({"error": f"internal error: {one_line(exc)}"}, 500), protocol

    def _other_method(self, req: Request) -> Response:
        """OPTIONS: the methods a path takes; another method on a known path: 405 with them (it was 404 'no route',
        as if the model or path did not exist); an unknown path: 404."""
        methods = {method for method, pattern, _, _ in self._routes if pattern.fullmatch(req.path)}
        if req.path == "/metrics":
            methods.add("GET")
        if not methods:
            raise NotFound(f"no route {req.method} {req.path} (KServe v2 under /v2, TF Serving under /v1/models)")
        allow = sorted(methods | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set()))
        if req.method == "OPTIONS":
            return Response(200, b"", headers={"Allow": ", ".join(allow)})
        raise MethodNotAllowed(f"{req.method} is not allowed on {req.path}; it takes {', '.join(allow)}", allow)

    def authorize(self, headers: Any) -> None:
        """The bearer token, its scheme named in any case (RFC 9110 §11.1: 'bearer TOKEN' was refused). Checked
        before a body is read too: an unauthorized client made the server read and hold up to --max-body-mb."""
        token = self.options.token
        if not token:
            return
        scheme, _, given = (headers.get("Authorization") or "").strip().partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer TOKEN)")

    def _metrics(self) -> Response:
        from ..telemetry.prometheus import build_registry, exposition  # prometheus_client: imported when scraped

        if self._registry is None:
            self._registry = build_registry(None, self.stats)
        body, ctype = exposition(self._registry)
        return Response(200, body, ctype)

    def body_limit(self, headers: Any) -> int:
        """The largest body this request may have: JSON-only bodies are capped lower than binary ones. Only binary
        tensors (with their header's length) and image/* bodies are binary: an application/octet-stream body without
        that header is parsed as JSON whole, and got the 64 MB limit (~1.3 GB of Python floats)."""
        ctype = (headers.get("Content-Type") or "").lower()
        if headers.get(HEADER_LENGTH) is not None or ctype.startswith("image/"):
            return self.options.max_body_bytes
        return self.options.max_json_bytes


def error_response(exc: HttpError) -> Response:
    """An HttpError's one-line JSON answer, with the headers its status calls for."""
    response = Response.of_json({"error": str(exc)}, exc.status)
    if isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(exc.allow)
    if isinstance(exc, Unauthorized):  # RFC 9110 §11.6.1: a 401 says which scheme it wants
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgekit"'
    return response


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests; `serving` is the ServingServer (set by _handler_class)."""

    serving: ServingServer
    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient and requests reuse connections
    disable_nagle_algorithm = True  # headers and body go out without a 40 ms delayed-ACK stall
    server_version = "edgekit-serving"

    head_deadline: float | None = None  # when the request line and headers being read are due (monotonic)

    def setup(self) -> None:
        super().setup()
        plain, self.rfile = self.rfile, io.BufferedReader(_HeadDeadlineReader(self.connection, self))
        plain.close()

    def handle_one_request(self) -> None:
        """Each request's head (including a keep-alive connection's wait for it) is due within read_timeout_s."""
        self.head_deadline = time.monotonic() + self.serving.options.read_timeout_s
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.head_deadline = None  # the head is in: the body gets read_timeout_s per read, as before
        return ok

    def handle(self) -> None:
        """A client that hangs up mid-request or mid-response ends its connection quietly: each one used to print a
        socketserver traceback (ConnectionResetError, BrokenPipeError) to the agent's stderr and journal."""
        try:
            super().handle()
        except ConnectionError as exc:
            log.debug("serving: client %s went away: %s", self.client_address[0], one_line(exc))
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self._drop_body():
            self._serve(b"")

    def do_HEAD(self) -> None:  # noqa: N802 - health checks and monitors may HEAD: GET's head, no body (was 501)
        if self._drop_body():
            self._serve(b"", head=True)

    def do_OPTIONS(self) -> None:  # noqa: N802
        if self._drop_body():
            self._serve(b"")

    def _drop_body(self) -> bool:
        """A body some clients send with GET is read (within the limits) and dropped; False when the request was
        answered already. Left in the stream, it was parsed as the next request, which got a 400 'bad syntax'."""
        if self.headers.get("Content-Length") in (None, "0") and self.headers.get("Transfer-Encoding") is None:
            return True
        return self._body() is not None

    def _not_allowed(self) -> None:
        """PUT/PATCH/DELETE: 405 (or 404) without reading a body, so the connection closes."""
        self.close_connection = True
        self._serve(b"")

    do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if body is not None:
            self._serve(body)

    def _body(self) -> bytes | None:
        """The request's body, or None when it was refused (answered) or the client left."""
        try:
            return self._read_body()
        except ClientGone as exc:  # nobody to answer; the connection's bytes are no longer a request stream
            log.debug("serving: client left mid-body (%s)", exc)
            self.close_connection = True
        except HttpError as exc:
            self._refuse(exc)
        return None

    def handle_expect_100(self) -> bool:
        """A body that would be refused is refused now, instead of 100 Continue inviting it (RFC 9110 §10.1.1):
        curl sends `Expect: 100-continue` for bodies over 1 KB and used to upload all of an oversize one for its 413."""
        refused = self._refusal() if self.command == "POST" else None
        if refused is not None:
            self._refuse(refused)
            return False
        return super().handle_expect_100()

    def _refusal(self) -> HttpError | None:
        try:
            self.serving.authorize(self.headers)  # 401 before the body is read (or invited by 100 Continue)
        except Unauthorized as exc:
            return exc
        return refusal(self.headers, self.serving.body_limit(self.headers), self.serving.options.max_json_bytes)

    def _read_body(self) -> bytes:
        refused = self._refusal()
        if refused is not None:
            raise refused
        return read_body(self.rfile, self.headers, self.serving.body_limit(self.headers))

    def _refuse(self, exc: HttpError) -> None:
        """Answer without reading (the rest of) the body, then close the connection: its unread bytes are garbage."""
        self.close_connection = True
        self._send(error_response(exc))
        self.serving.stats.request("other", exc.status, None)

    def _serve(self, body: bytes, head: bool = False) -> None:
        t0 = time.perf_counter()
        path, _, query = self.path.partition("?")
        req = Request("GET" if head else self.command, path, self.headers, body, dict(parse_qsl(query)))
        response, protocol = self.serving.dispatch(req)
        self._send(response, with_body=not head)
        # latency is the inference requests' (the POST routes): health probes, metadata and scrapes answered in
        # 0.2 ms made a probed endpoint's p50 a tenth of what any inference took
        ms = (time.perf_counter() - t0) * 1000.0 if req.method == "POST" else None
        self.serving.stats.request(protocol, response.status, ms)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, 431 for too many headers, 501 for an unknown method) as
        one line of JSON like every other error (they were HTML pages)."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self.log_error("code %d, message %s", code, text)
        self._send(Response.of_json({"error": text}, code), with_body=self.command != "HEAD")

    def _send(self, response: Response, with_body: bool = True) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for k, v in response.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if with_body:
            self.wfile.write(response.body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("serving: " + fmt, *args)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """At most `limit` connections at once: each holds a thread, and idle or slow clients opening more (slowloris)
    grew threads without bound. One connection over the limit gets 503 and is closed on the accepting thread."""

    _BUSY_BODY = b'{"error":"too many connections: try again later"}'
    BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)  # never stall the accepting thread on a client that does not read
                request.sendall(self.BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _HeadDeadlineReader(io.RawIOBase):
    """The connection's bytes, with the request head (request line and headers) due within one deadline: the socket's
    timeout applies to each read, so a client sending a header byte every 29 s held its thread for ever."""

    def __init__(self, sock: socket.socket, handler: "_Handler") -> None:
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        deadline = self.handler.head_deadline
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's head took too long")
            self.sock.settimeout(min(left, self.handler.timeout))
        else:
            self.sock.settimeout(self.handler.timeout)
        return self.sock.recv_into(buffer)


def _handler_class(server: ServingServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"serving": server, "timeout": server.options.read_timeout_s})
