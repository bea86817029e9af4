"""Liveness of a running pipeline (the JSON behind `/health`): is it alive and producing results?

Not the install-time model health check: that is edge_agent.ota.model_check.
"""

from __future__ import annotations

from typing import Any

from .pipeline_stats import PipelineStats


def pipeline_liveness(stats: PipelineStats, max_frame_age_s: float = 10.0, startup_grace_s: float = 30.0) -> dict[str, Any]:
    """{ok, model, fps, last_frame_age_s, ...}: ok is False when no frame was done for `max_frame_age_s`
    (or none at all after `startup_grace_s`)."""
    snap = stats.snapshot()
    age = snap["last_frame_age_s"]
    if age is None:
        ok = snap["uptime_s"] < startup_grace_s
        reason = "starting" if ok else f"no frame processed in {snap['uptime_s']:.0f} s"
    else:
        ok = age <= max_frame_age_s
        reason = "ok" if ok else f"last frame {age:.1f} s ago"
    model = snap["model"]
    return {
        "ok": ok,
        "reason": reason,
        "model": None if model is None else {"name": model["name"], "version": model["version"]},
        "source": snap["source"],
        "fps": snap["fps"],
        "last_frame_age_s": age,
        "processed": snap["processed"],
        "dropped": snap["dropped"],
        "errors": snap["errors"],
        "system": snap.get("system"),
    }
