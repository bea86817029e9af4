"""The management API and web console as one ASGI app (FastAPI), served by `edge-fleet serve --http`.

    /api/v1/...              JSON API, every route behind a bearer token (deps.py)
    /api/v1/openapi.json     its OpenAPI document
    /api/v1/events           server-sent events for the live console
    /                        the console: static HTML/JS/CSS from edge_fleet/console/static (no build step)

Every answer carries a strict Content-Security-Policy (scripts only from this origin, no inline
script, no eval), so even a device id or error text that slipped past escaping cannot run.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from typing import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from . import errors
from .body_limit import BodyLimit
from .deps import ApiState
from .events import ChangeFeed
from .events import router as events_router
from .limits import MAX_JSON_BODY
from .routes_admin import router as admin_router
from .routes_bundles import router as bundles_router
from .routes_fleet import router as fleet_router
from .routes_rollouts import router as rollouts_router

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def create_app(st: ApiState, console: bool = True) -> FastAPI:
    """The app for one fleet. `console=False` serves the API only."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        st.stopping[0] = True  # open event streams end, so shutdown does not wait for them

    app = FastAPI(title="edgekit fleet API", version="1",
                  description="Devices, bundles, staged rollouts, tokens and audit of one edgekit fleet. "
                              "Send `Authorization: Bearer <token>` (create one with `edge-fleet tokens create`).",
                  openapi_url="/api/v1/openapi.json", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.fleet = st
    app.state.feed = ChangeFeed(st.registry)
    errors.install(app)
    for router in (fleet_router, bundles_router, rollouts_router, admin_router, events_router):
        app.include_router(router)

    app.add_middleware(BodyLimit, limit=MAX_JSON_BODY)  # before FastAPI reads a body; inside the headers below

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    if console:
        static = resources.files("edge_fleet.console").joinpath("static")
        app.mount("/", StaticFiles(directory=str(static), html=True), name="console")
    return app
