"""Tokens and the audit log (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from .. import actions
from ..access import Actor
from ..registry import Registry
from ..views import audit_view
from .deps import Paging, actor, admin, page, paging, registry
from .models import TokenBody

router = APIRouter(prefix="/api/v1", tags=["admin"])


@router.get("/tokens", summary="API tokens (never their secrets)")
def list_tokens(_who: Actor = Depends(admin), reg: Registry = Depends(registry),
                p: Paging = Depends(paging)) -> dict[str, Any]:
    tokens = reg.tokens()
    return page([t.to_json() for t in tokens[p.offset:p.offset + p.limit]], len(tokens), p)


@router.post("/tokens", status_code=201, summary="Create a token; its secret is in this answer only")
def create_token(body: TokenBody, who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    secret, rec = actions.new_token(reg, who, body.name, body.role)
    return {**rec.to_json(), "token": secret}


@router.delete("/tokens/{name}", summary="Revoke a token")
def delete_token(name: str, who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    actions.drop_token(reg, who, name)
    return {"revoked": name}


@router.get("/audit", summary="Who published, deployed, halted, resumed or rolled back what, and when")
def list_audit(_who: Actor = Depends(admin), reg: Registry = Depends(registry), p: Paging = Depends(paging),
               actor_name: str | None = Query(None, alias="actor", max_length=100),
               action: str | None = Query(None, max_length=50)) -> dict[str, Any]:
    got = reg.audit_page(p.limit, p.offset, actor=actor_name, action=action)
    return page([audit_view(e) for e in got.items], got.total, p)
