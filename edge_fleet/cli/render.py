"""Text output of the CLI, from the JSON shapes both backends return (edge_fleet.views)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

Json = dict[str, Any]

# every control character but the line break (ESC, CR, BEL, C1...) shown escaped, not sent to the terminal
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)] if c != 0x0a}


def terminal_safe(text: str) -> str:
    """Text for the operator's terminal: a device's report (its error, profile, model name, drift figures) or a
    group name carried escape sequences and carriage returns that recoloured or overwrote the table."""
    return text.translate(_CONTROLS)


def escape_newlines(value: Any) -> str:
    """A field from a device or an operator shown on its own line: a line break in it is shown as \\n."""
    return str(value).replace("\n", "\\n")


def ts(value: float | None) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def status_text(devices: list[Json], active: list[str], shadows: list[Json] | None = None) -> str:
    fmt = "{:<20} {:<18} {:<10} {:<14} {:>4} {:<12} {:<8} {:<19} {:>8} {:>8}  {}"
    lines = [fmt.format("DEVICE", "PROFILE", "GROUP", "MODEL", "VER", "PHASE", "PRESENCE", "LAST SEEN",
                        "P50 ms", "P99 ms", "DRIFT")]
    for d in devices:
        lines.append(fmt.format(d["id"], escape_newlines(d["profile"] or "-"), escape_newlines(d["group"] or "-"),
                                escape_newlines(d["model"] or "-"),
                                d["version"] or "-", d["phase"] or "-", d["presence"], ts(d["last_seen"]),
                                f"{d['latency_p50_ms']:.2f}" if d["latency_p50_ms"] is not None else "-",
                                f"{d['latency_p99_ms']:.2f}" if d["latency_p99_ms"] is not None else "-",
                                drift_text(d.get("drift"))))
        if d["last_error"]:
            lines.append(f"  last error: {escape_newlines(d['last_error'])}")
    if active:
        lines.append("active rollouts: " + ", ".join(active))
    for r in shadows or []:  # views.rollout_shadows: active rollouts and the newest one
        for s in r["stages"]:
            lines.append(f"rollout {r['id']} {r['bundle']} {r['status']} stage {s['stage']} {shadow_text(s)}")
    return "\n".join(lines)


def drift_text(drift: Json | None) -> str:
    """`ok`, `drift (input.brightness PSI 1.93)`, `warming_up 40/200`, or `-` (no live frames monitored), followed
    by the model the state belongs to (`of digits:3`): an agent older than the reset on switch reported the previous
    model's state beside the new model until the new one saw an input."""
    if not drift:
        return "-"
    state = escape_newlines(drift.get("state", "?"))  # a device's own text, as its error is
    of = f" of {escape_newlines(drift['model'])}" if drift.get("model") else ""
    if state == "warming_up":
        return f"warming_up {drift.get('frames')}/{drift.get('window')}{of}"
    if state in ("ok", "drift") and drift.get("worst"):
        return f"{state} ({escape_newlines(drift['worst'])} PSI {drift.get('psi')}){of}"
    return state + of


def shadow_text(s: Json) -> str:
    """One stage's shadow figures (views.stage_shadow)."""
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(s["verdicts"].items()))
    agree = (f"agreement min {s['agreement_min']:.3f} mean {s['agreement_mean']:.3f} (minimum {s['min_agreement']})"
             if s.get("agreement_min") is not None else "no agreement measured")
    return (f"shadow: {verdicts}; {agree} over {s['frames']} frames; p50 active {s['active_p50_ms']} ms, "
            f"new {s['candidate_p50_ms']} ms")


def rollout_text(r: Json) -> str:
    stages = r["stages"]
    lines = [f"rollout {r['id']}: {r['name']}:{r['version']} {r['status'].upper()}"
             f" stage {max(r['stage'], 0) + 1}/{len(stages)} (cumulative devices {list(stages)})"
             + (f" - {escape_newlines(r['reason'])}" if r.get("reason") else "")]
    for d in r.get("devices", []):
        stage = "skip" if d["stage"] < 0 else f"s{d['stage'] + 1}"
        lines.append(f"  {d['device_id']:<24} {stage:<5} {d['status']:<12} {escape_newlines(d['reason'] or '')}")
    for s in r.get("stage_progress", []):
        if s.get("shadow"):
            lines.append(f"  stage {s['stage']} {shadow_text(s['shadow'])}")
    return "\n".join(lines)


def rollouts_text(rows: list[Json]) -> str:
    return "\n".join(f"{r['id']:<32} {r['name']}:{r['version']:<6} {r['status']:<10} {escape_newlines(r.get('reason') or '')}"
                     for r in rows) or "no rollouts"


def bundles_text(rows: list[Json]) -> str:
    lines = [f"{'NAME:VERSION':<24} {'PROFILE':<20} {'SIZE':>10}  SHA256"]
    lines += [f"{b['name'] + ':' + str(b['version']):<24} {b['profile']:<20} {b['size']:>10}  {b['sha256'][:16]}"
              for b in rows]
    return "\n".join(lines)


def tokens_text(rows: list[Json]) -> str:
    lines = [f"{'NAME':<24} {'ROLE':<9} {'CREATED':<19} {'LAST USED':<19} STATE"]
    lines += [f"{t['name']:<24} {t['role']:<9} {ts(t['created_at']):<19} {ts(t['last_used_at']):<19} "
              + ("revoked " + ts(t["revoked_at"]) if t["revoked_at"] else "live") for t in rows]
    return "\n".join(lines)


def audit_text(rows: list[Json]) -> str:
    return "\n".join(f"{ts(e['at'])}  {e['actor']:<20} {e['action']:<14} {e['target'] or '-':<32} {e['outcome']}"
                     for e in rows) or "no audit entries"
