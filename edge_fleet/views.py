"""JSON views of registry records: the one shape each object has, for the CLI's `--json`, the
management API and the console alike (a remote `edge-fleet --api ...` prints what a local one does).

Pure functions of records; no registry access, no HTTP.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Iterator

from edge_agent.finite_json import dumps as finite_dumps

from .registry.records import (AuditEntry, BundleRecord, DeviceEvent, DeviceRecord, LatencySample, RolloutRecord,
                               TargetStatus, latency_ms)
from .rollout.states import COUNTS_AS_FAILURE, STAGE_FINISHED


def device_view(d: DeviceRecord) -> dict[str, Any]:
    """The flat per-device row of `status`, `devices` and the API's device list."""
    p50, p99 = latency_ms(d.latency, "p50"), latency_ms(d.latency, "p99")
    cur = d.current
    return {"id": d.id, "profile": d.profile, "group": d.group, "model": cur.name if cur else None,
            "version": cur.version if cur else None, "sha256": cur.sha256 if cur else None, "phase": d.phase,
            "deployment_id": d.deployment_id, "last_error": d.last_error, "last_seen": d.last_seen,
            "presence": d.presence or "unknown", "latency_p50_ms": p50, "latency_p99_ms": p99,
            "inferences": d.inferences, "errors": d.errors, "agent_version": d.agent_version,
            "previous": asdict(d.previous) if d.previous else None, "drift": d.drift, "shadow": d.shadow}


def device_detail(d: DeviceRecord, history: list[DeviceEvent], history_total: int,
                  latency: list[LatencySample], rollouts: list[RolloutRecord]) -> dict[str, Any]:
    """A device with its update in flight, update history, latency series and the rollouts that targeted it."""
    out = device_view(d)
    out.update({
        "target": asdict(d.target) if d.target else None, "progress": d.progress,
        "reported_at": d.reported_at, "presence_at": d.presence_at, "telemetry_at": d.telemetry_at,
        "latency": d.latency,
        "history": [event_view(e) for e in history], "history_total": history_total,
        "latency_series": [asdict(s) for s in latency],
        "rollouts": [_device_in_rollout(r, d.id) for r in rollouts],
    })
    return out


def event_view(e: DeviceEvent) -> dict[str, Any]:
    return {"at": e.at, "phase": e.phase, "model": e.current.name if e.current else None,
            "version": e.current.version if e.current else None, "sha256": e.current.sha256 if e.current else None,
            "deployment_id": e.deployment_id, "last_error": e.last_error}


def _device_in_rollout(r: RolloutRecord, device_id: str) -> dict[str, Any]:
    t = r.target(device_id)
    return {"rollout_id": r.id, "bundle": f"{r.name}:{r.version}", "rollout_status": r.status, "stage": t.stage,
            "status": t.status, "reason": t.reason, "sent_at": t.sent_at, "done_at": t.done_at, "shadow": t.shadow}


def stage_progress(r: RolloutRecord) -> list[dict[str, Any]]:
    """Per stage: its devices, how many succeeded / failed / are finished, and a percentage."""
    out = []
    start = 0
    for i, cumulative in enumerate(r.stages):
        devs = [t for t in r.targets if t.stage == i]
        ok = sum(t.status == TargetStatus.SUCCEEDED for t in devs)
        failed = sum(t.status in COUNTS_AS_FAILURE for t in devs)
        finished = sum(t.status in STAGE_FINISHED for t in devs)
        state = "active" if i == r.stage else ("done" if i < r.stage else "waiting")
        out.append({"stage": i + 1, "devices": cumulative - start, "cumulative": cumulative, "state": state,
                    "succeeded": ok, "failed": failed, "finished": finished,
                    "percent": round(100.0 * ok / len(devs), 1) if devs else 0.0,
                    "statuses": _count(t.status for t in devs), "shadow": stage_shadow(devs, r.shadow)})
        start = cumulative
    return out


def stage_shadow(targets: list[Any], gate: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A stage's shadow figures: verdicts, the lowest and mean agreement, median latencies of both models
    (None when no device of the stage reported a shadow run); the minimum is the rollout's `gate`, not a
    device's word for it."""
    reports = [t.shadow for t in targets if t.shadow]
    if not reports:
        return None

    def figures(key: str) -> list[float]:
        return sorted(v for s in reports if (v := _finite(s.get(key))) is not None)

    agreement, active, new = figures("agreement"), figures("active_p50_ms"), figures("candidate_p50_ms")
    return {"devices": len(reports), "verdicts": _count(str(s.get("verdict")) for s in reports),
            "frames": sum(int(_finite(s.get("frames")) or 0) for s in reports),
            "min_agreement": _finite((gate or reports[0]).get("min_agreement")),
            "agreement_min": agreement[0] if agreement else None,
            "agreement_mean": round(sum(agreement) / len(agreement), 4) if agreement else None,
            "active_p50_ms": active[len(active) // 2] if active else None,
            "candidate_p50_ms": new[len(new) // 2] if new else None}


def _finite(value: Any) -> float | None:
    """A device's free-form figure as a number, or None: its report is any JSON object, so a NaN (json.loads
    takes it) unsorted the agreements (the stage's minimum came out as another device's higher one), and a
    NaN or text frame count raised in int() for every view of the rollout (status, rollouts, the console)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 1e300:  # also 400-digit ints
        return None
    return float(value) if math.isfinite(value) else None


def rollout_view(r: RolloutRecord) -> dict[str, Any]:
    """The rollout (`deploy/rollouts --json` shape) plus progress per stage and overall."""
    out = r.to_json()
    targets = r.targets
    ok = sum(t.status == TargetStatus.SUCCEEDED for t in targets)
    out["bundle"] = f"{r.name}:{r.version}"
    out["progress"] = {"targets": len(targets), "succeeded": ok,
                       "failed": sum(t.status in COUNTS_AS_FAILURE for t in targets),
                       "skipped": len(r.devices) - len(targets),
                       "percent": round(100.0 * ok / len(targets), 1) if targets else 0.0}
    out["stage_progress"] = stage_progress(r)
    return out


def rollout_shadows(rollouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shadow figures per stage of rollouts (rollout_summary/view shapes) that have any, for `status`:
    [{id, bundle, status, stages: [{stage, **stage_shadow}]}]."""
    out, seen = [], set()
    for r in rollouts:
        stages = [{"stage": s["stage"], **s["shadow"]} for s in r.get("stage_progress", []) if s.get("shadow")]
        if stages and r["id"] not in seen:
            seen.add(r["id"])
            out.append({"id": r["id"], "bundle": r["bundle"], "status": r["status"], "stages": stages})
    return out


def rollout_summary(r: RolloutRecord) -> dict[str, Any]:
    """A rollout without its per-device rows (lists, the overview)."""
    full = rollout_view(r)
    del full["devices"]
    return full


def bundle_view(b: BundleRecord) -> dict[str, Any]:
    """A bundle row: what `edge-fleet bundles --json` prints, plus the manifest's headline facts."""
    m = b.manifest
    out = b.to_json()
    out.pop("path")
    out.update({"precision": m.get("precision"), "format": m.get("format"), "runtime": m.get("runtime")})
    return out


def bundle_detail(b: BundleRecord) -> dict[str, Any]:
    """Everything a release reviewer looks at: precision, the accuracy gate's evidence, sizes,
    host latency, who signed it, the files, and the whole manifest."""
    m = b.manifest
    measurements = m.get("measurements") or {}
    out = bundle_view(b)
    out.update({
        "accuracy": measurements.get("accuracy"), "host_latency": measurements.get("host_latency"),
        "sizes": measurements.get("sizes"), "mixed_precision": measurements.get("mixed_precision"),
        "signer": {"key_id": b.key_id, "algorithm": b.signature.get("algorithm")},
        "inputs": m.get("inputs"), "outputs": m.get("outputs"), "files": m.get("files"),
        "source": m.get("source"), "created_by": m.get("created_by"), "manifest": m,
    })
    return out


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return asdict(e)


def _count(values: Iterator[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def dumps(value: Any) -> str:
    """The CLI's `--json` text: strict JSON, indented (a device's free-form figures, its shadow and drift reports or
    rows stored before NaN was refused, may hold NaN: null, as the API answers them)."""
    return finite_dumps(value, indent=2, default=str)
