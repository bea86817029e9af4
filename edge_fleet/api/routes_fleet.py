"""Reads of the fleet (overview, devices, groups) and grouping a device."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query

from .. import actions
from ..access import Actor
from ..errors import NotFound
from ..registry import ACTIVE_ROLLOUT, Registry
from ..registry.records import DeviceFilter
from ..views import device_detail, device_view, rollout_summary
from .deps import Paging, actor, page, paging, registry
from .models import GroupBody

router = APIRouter(prefix="/api/v1", tags=["fleet"])
DeviceId = Path(..., max_length=200)
SortKey = Literal["id", "profile", "group", "model", "version", "phase", "presence", "last_seen", "latency",
                  "-id", "-profile", "-group", "-model", "-version", "-phase", "-presence", "-last_seen", "-latency"]


def overview(reg: Registry) -> dict[str, Any]:
    """Counts by phase and presence, active rollouts with progress per stage, the latest finished ones."""
    latest = reg.rollouts_page(5, 0).items
    return {"counts": reg.device_counts(),
            "active_rollouts": [rollout_summary(r) for r in reg.rollouts(ACTIVE_ROLLOUT)],
            "recent_rollouts": [rollout_summary(r) for r in latest if r.status not in ACTIVE_ROLLOUT],
            "bundles": reg.bundles_page(1, 0).total}


@router.get("/overview", summary="Fleet overview")
def get_overview(_who: Actor = Depends(actor), reg: Registry = Depends(registry)) -> dict[str, Any]:
    return overview(reg)


@router.get("/whoami", summary="The caller's token name and role")
def whoami(who: Actor = Depends(actor)) -> dict[str, str]:
    return {"name": who.name, "role": who.role}


@router.get("/devices", summary="Devices, filtered, sorted and paginated")
def list_devices(
    _who: Actor = Depends(actor), reg: Registry = Depends(registry), p: Paging = Depends(paging),
    profile: str | None = Query(None, max_length=200), group: str | None = Query(None, max_length=200),
    model: str | None = Query(None, max_length=200), version: int | None = Query(None, ge=0, le=2**63 - 1),
    phase: str | None = Query(None, max_length=50), presence: str | None = Query(None, max_length=50),
    latency_min: float | None = Query(None, ge=0, le=1e9, description="p50 >= this many ms"),
    latency_max: float | None = Query(None, ge=0, le=1e9, description="p50 <= this many ms"),
    q: str | None = Query(None, max_length=200, description="part of the device id"),
    sort: SortKey = Query("id", description="column; a leading - sorts descending"),
) -> dict[str, Any]:
    where = DeviceFilter(profile=profile, group=group, model=model, version=version, phase=phase, presence=presence,
                         latency_min=latency_min, latency_max=latency_max, search=q)
    got = reg.devices_page(where, p.limit, p.offset, sort=sort.lstrip("-"), descending=sort.startswith("-"))
    return page([device_view(d) for d in got.items], got.total, p)


@router.get("/devices/{device_id}", summary="One device: state, update history, last error, latency over time")
def get_device(device_id: str = DeviceId, _who: Actor = Depends(actor), reg: Registry = Depends(registry),
               history_limit: int = Query(50, ge=1, le=500), history_offset: int = Query(0, ge=0, le=10**9),
               samples: int = Query(300, ge=1, le=720)) -> dict[str, Any]:
    dev = reg.device(device_id)
    if dev is None:
        raise NotFound(f"no device {device_id!r}")
    history = reg.device_events(device_id, history_limit, history_offset)
    rollouts = reg.rollouts_page(20, 0, device_id=device_id).items
    return device_detail(dev, history.items, history.total, reg.latency_samples(device_id, samples), rollouts)


@router.put("/devices/{device_id}/group", summary="Put a device in a group (operator)")
def put_group(body: GroupBody, device_id: str = DeviceId, who: Actor = Depends(actor),
              reg: Registry = Depends(registry)) -> dict[str, Any]:
    return device_view(actions.set_group(reg, who, device_id, body.group))


@router.get("/groups", summary="Groups and their device counts")
def list_groups(_who: Actor = Depends(actor), reg: Registry = Depends(registry),
                p: Paging = Depends(paging)) -> dict[str, Any]:
    got = reg.groups_page(p.limit, p.offset)
    return page([{"name": g, "devices": n} for g, n in got.items], got.total, p)
