"""Errors as HTTP answers: one JSON shape for every refusal, carrying the CLI's exit code.

    {"error": "unknown-bundle", "message": "digits:9 is not published: ...", "exit_code": 4}

the same fields `edge-fleet --json` prints for a failure (edge_agent.errors: `error` is the code's
stable name), so a remote `edge-fleet --api ...` exits with the same code and line as a local
one, and a CI pipeline can branch on `error` without parsing English.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_agent.bundle import BundleError, InsufficientSpace
from edge_agent.errors import EdgekitError, one_line

from ..errors import (AccessDenied, ActionRefused, ApiFailed, NoTargets, NotFound, RegistryUnreachable,
                      RolloutConflict, TokenExists, UnknownBundle, VersionConflict, exit_code)

# error class -> HTTP status; any other EdgekitError (a FleetError, ...) is 400
STATUS: dict[type[EdgekitError], int] = {
    NotFound: 404, UnknownBundle: 404, AccessDenied: 403, RolloutConflict: 409, VersionConflict: 409,
    ActionRefused: 409, TokenExists: 409, NoTargets: 422, InsufficientSpace: 507, BundleError: 422,  # first match wins
    RegistryUnreachable: 503,  # the fleet's database is away, not the request wrong (was 400)
}


class ApiError(Exception):
    """A refusal that only HTTP has (401 no token, 413 too large): status, stable name, message."""

    def __init__(self, status: int, error: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.code = code if code is not None else exit_code("api-failed")


def body(error: str, message: str, code: int, **extra: Any) -> dict[str, Any]:
    return {"error": error, "message": message, "exit_code": code, **extra}


def install(app: FastAPI) -> None:
    """Register the handlers that turn our errors (and FastAPI's own) into the one JSON shape."""

    @app.exception_handler(EdgekitError)
    async def edgekit_error(_r: Request, exc: EdgekitError) -> JSONResponse:
        # the one line `edge-fleet` prints for this error (a tampered bundle: publish's own line) and its code
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        extra = getattr(exc, "fields", {})  # e.g. a refused action: the rollout's status
        return JSONResponse(body(exc.kind, one_line(exc), exc.exit_code, **extra), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_r: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body(exc.error, exc.message, exc.code), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse(body("invalid-request", "; ".join(problems) or "invalid request", exit_code("usage"),
                                 detail=[{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                                         for e in exc.errors()]), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_r: Request, exc: Exception) -> JSONResponse:
        # a bug or a registry error without a class of its own (SQLite still locked after its busy timeout) was a
        # plain-text "Internal Server Error": JSON like every other answer, so `--api` and the console show it
        return JSONResponse(body("internal", f"internal error ({type(exc).__name__}: {one_line(exc)}): see the "
                                 "server's log", exit_code("error")), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        code = exit_code("not-found") if exc.status_code == 404 else ApiFailed.exit_code
        return JSONResponse(body(name, str(exc.detail), code), status_code=exc.status_code)
