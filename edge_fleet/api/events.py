"""Live updates for the console: server-sent events (text/event-stream) on GET /api/v1/events.

One ChangeFeed per app polls the registry's change stamp (cheap: two integers) at most every
0.4 s, whoever asks; when it moved, it recomputes the overview once and every open stream sends
it as a `change` event. Pages then re-read what they show (the device table, a rollout) through
the ordinary API. A `: keep-alive` comment every 15 s keeps proxies from closing idle streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from edge_agent.finite_json import dumps as finite_dumps

from ..access import Actor
from ..registry import Registry
from .deps import ApiState, actor, state
from .routes_fleet import overview

router = APIRouter(prefix="/api/v1", tags=["fleet"])
POLL = 0.4
KEEPALIVE = 15.0


class ChangeFeed:
    """The latest overview and a sequence number that grows each time the fleet changed."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.seq = 0
        self.payload: dict[str, Any] = {}
        self._stamp: tuple[float, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def poll(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._checked >= POLL:
                self._checked = time.monotonic()
                stamp = self.reg.change_stamp()
                if stamp != self._stamp:
                    self._stamp = stamp
                    self.seq += 1
                    self.payload = {"seq": self.seq, "at": time.time(), "overview": overview(self.reg)}
            return self.seq, self.payload


async def _stream(request: Request, st: ApiState, feed: ChangeFeed) -> AsyncIterator[str]:
    sent, quiet_since = -1, time.monotonic()
    yield "retry: 2000\n\n"
    while not st.stopping[0] and not await request.is_disconnected():
        seq, payload = await run_in_threadpool(feed.poll)
        if seq != sent:
            sent, quiet_since = seq, time.monotonic()
            # finite_dumps: a device's free-form shadow figures (agreement NaN) reached the overview as `NaN`, which
            # the console's JSON.parse refuses: live updates stopped for every viewer while that rollout was shown
            yield f"event: change\nid: {seq}\ndata: {finite_dumps(payload, default=str)}\n\n"
        elif time.monotonic() - quiet_since > KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL / 2)


@router.get("/events", summary="Live changes (server-sent events: `change` carries the overview)",
            response_class=StreamingResponse)
async def events(request: Request, _who: Actor = Depends(actor), st: ApiState = Depends(state)) -> StreamingResponse:
    feed: ChangeFeed = request.app.state.feed
    return StreamingResponse(_stream(request, st, feed), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
