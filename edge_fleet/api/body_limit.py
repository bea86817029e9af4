"""A size limit on request bodies, applied before FastAPI reads one.

FastAPI reads and parses a JSON body before it runs the route's dependencies, the bearer-token check
among them: an anonymous 300 MB `POST /api/v1/rollouts` made the server hold 1.2 GB before its 401.
Every API body but a bundle upload (streamed to disk with its own `--max-upload`) is a small JSON
document, so anything larger is refused here (413) without being parsed.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from edge_agent.errors import exit_code

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: bodies over `limit` bytes get 413 (the upload route `exempt` has its own limit)."""

    def __init__(self, app: App, limit: int, exempt: tuple[str, ...] = ("/api/v1/bundles",)) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []  # no or a false Content-Length: read up to the limit, then hand the body on
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps({"error": "too-large", "message": f"request body over the API's limit of {self.limit} "
                              "bytes (a bundle goes to POST /api/v1/bundles)", "exit_code": exit_code("api-failed")})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload.encode()})


def _replay(first: list[Message], receive: Receive) -> Receive:
    """A receive() that gives `first` (the body read already), then the connection's own messages (a
    disconnect, which an event stream waits for)."""
    pending = list(first)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
