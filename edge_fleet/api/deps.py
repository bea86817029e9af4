"""What every route needs: the fleet's state (registry, trust, limits) and the caller's identity.

Every /api route requires a token (`Authorization: Bearer efk_...`): reads need a viewer, and the
actions in edge_fleet.actions check the operator/admin roles themselves and audit refusals. A
missing or unknown token is 401; a role too low is 403. Nothing is anonymous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fastapi import Depends, Query, Request

from edge_agent.bundle import TrustStore

from ..access import Actor, authenticate
from ..errors import exit_code
from ..registry import Registry
from .errors import ApiError
from .limits import DEFAULT_MAX_UPLOAD



@dataclass
class ApiState:
    """What the app serves: the registry, how to get the trusted keys now, and the upload limit."""

    registry: Registry
    trust: Callable[[], TrustStore | None] = lambda: None
    max_upload: int = DEFAULT_MAX_UPLOAD
    stopping: list[bool] = field(default_factory=lambda: [False])  # set on shutdown: live streams end


def state(request: Request) -> ApiState:
    return request.app.state.fleet


def registry(request: Request) -> Registry:
    return state(request).registry


def actor(request: Request) -> Actor:
    """The caller, from its bearer token; 401 without a valid one."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "unauthenticated", "missing token: send Authorization: Bearer <token>",
                       exit_code("access-denied"))
    who = authenticate(registry(request), secret.strip())
    if who is None:
        raise ApiError(401, "unauthenticated", "unknown or revoked token", exit_code("access-denied"))
    return who


def admin(who: Actor = Depends(actor)) -> Actor:
    if not who.may("admin"):
        raise ApiError(403, "access-denied", f"needs the admin role; token {who.name!r} is {who.role}",
                       exit_code("access-denied"))
    return who


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(limit: int = Query(50, ge=1, le=500, description="rows per page"),
           offset: int = Query(0, ge=0, le=10**9, description="rows to skip")) -> Paging:
    return Paging(limit, offset)


def page(items: list, total: int, p: Paging) -> dict:
    """The one shape of every list: items, total rows, and the window asked for."""
    return {"items": items, "total": total, "limit": p.limit, "offset": p.offset}
