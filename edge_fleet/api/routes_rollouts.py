"""Rollouts: list, create (= `edge-fleet deploy`), progress per stage, halt / resume / roll back."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from .. import actions
from ..access import Actor
from ..registry import Registry, RolloutStatus
from ..rollout import parse_max_failures, parse_stages, shadow_gate
from ..views import rollout_summary, rollout_view
from .deps import Paging, actor, page, paging, registry
from .models import DeployBody

router = APIRouter(prefix="/api/v1", tags=["rollouts"])


@router.get("/rollouts", summary="Rollouts, newest first")
def list_rollouts(_who: Actor = Depends(actor), reg: Registry = Depends(registry), p: Paging = Depends(paging),
                  status: list[RolloutStatus] | None = Query(None, description="only these statuses (repeatable)"),
                  device: str | None = Query(None, max_length=200, description="only rollouts targeting it")
                  ) -> dict[str, Any]:
    got = reg.rollouts_page(p.limit, p.offset, statuses=status, device_id=device)
    return page([rollout_summary(r) for r in got.items], got.total, p)


@router.post("/rollouts", status_code=201, summary="Start a staged rollout (operator)")
def create_rollout(body: DeployBody, who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    r = actions.deploy(reg, who, body.bundle, devices=body.devices, group=body.group,
                       stages=parse_stages(body.stages), max_failures=parse_max_failures(body.max_failures),
                       stage_timeout=body.stage_timeout, stage_soak=body.stage_soak, source_url=body.source_url,
                       shadow=shadow_gate(body.min_shadow_agreement, body.shadow_frames, body.shadow_timeout))
    return rollout_view(r)


@router.get("/rollouts/{rollout_id}", summary="A rollout: progress per stage and per device")
def get_rollout(rollout_id: str, _who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    return rollout_view(actions.rollout_or_404(reg, rollout_id))


@router.post("/rollouts/{rollout_id}/{action}", summary="Halt (pause), resume or roll back a rollout (operator)")
async def act_on_rollout(rollout_id: str, action: Literal["halt", "resume", "rollback"], who: Actor = Depends(actor),
                         reg: Registry = Depends(registry),
                         wait: float = Query(5.0, ge=0, le=30, description="seconds to wait for the server to apply it")
                         ) -> dict[str, Any]:
    """The wait sleeps on the event loop, not in a worker thread: 40 operators' (or scripts') `?wait=30` held
    every thread of the pool the other endpoints run in, and the whole API stalled until they ended."""
    await run_in_threadpool(actions.submit_action, reg, who, rollout_id, action)
    deadline = time.monotonic() + wait
    while not (outcome := await run_in_threadpool(actions.action_outcome, reg, who, rollout_id, action))[0] \
            and time.monotonic() < deadline:
        await asyncio.sleep(actions.ACTION_POLL_S)
    return rollout_view(outcome[1])
