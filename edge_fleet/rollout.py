"""Staged rollouts: plan one in the registry, then drive it step by step.

`plan_rollout` resolves NAME:VERSION and the target devices, skips devices whose profile has
no bundle of that name and version (with a reason), splits the rest into cumulative stages
(default 5 %, 25 %, 100 %; at least one device per stage) and stores everything as a
`pending` rollout. `RolloutDriver.step()` (called periodically by the fleet server) moves
each rollout forward from what devices reported:

* a stage starts by publishing a retained DesiredState to each of its devices;
* a device succeeds when it reports the target bundle as current (phase succeeded/idle),
  fails when it reports failed/rolled_back for this deployment, or times out after
  `stage_timeout` seconds (a timeout counts as a failure); a device that succeeded and later
  reports rolled_back for this deployment (the agent's probation) counts as failed then;
* the next stage starts only when every device of the stage finished (and, with `stage_soak`,
  has stayed on the new bundle that long) and the failures of the whole rollout are within
  the threshold;
* when failures exceed the threshold the rollout HALTS: devices that had switched get their
  previous bundle as desired state with allow_downgrade=True, in-flight and failed devices
  get their previous bundle back as desired state too (so nothing switches later), and the
  remaining stages are never started. The rollout stays `halting` until every switched device
  reports its previous bundle again (`rolled_back`), reports that it could not
  (`rollback_failed`), or stays silent for `stage_timeout` (`rollback_timeout`); then `halted`.

All state lives in SQLite, so a restarted server continues a rollout where it was.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from edge_agent.ota.protocol import DesiredState, Topics, dumps

from .errors import FleetError, NoTargets, RolloutConflict, UnknownBundle
from .registry import BundleRecord, Registry

log = logging.getLogger(__name__)

DEFAULT_STAGES = (5.0, 25.0, 100.0)
DEFAULT_STAGE_TIMEOUT = 900.0
ACTIVE = ("pending", "running", "halting")  # halting: waiting for switched devices to confirm their roll-back
TERMINAL_DEVICE = ("succeeded", "failed", "timeout", "skipped", "rolled_back", "rollback_failed", "rollback_timeout",
                   "cancelled", "not_started")
FAILED_DEVICE = ("failed", "timeout")

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


def parse_target(text: str) -> tuple[str, int]:
    """'digits:2' -> ('digits', 2)."""
    name, sep, version = text.rpartition(":")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise FleetError(f"bundle must be given as NAME:VERSION (e.g. digits:2), got {text!r}")
    return name, int(version)


def parse_stages(text: str) -> list[float]:
    """'5,25,100' -> [5.0, 25.0, 100.0]: increasing percentages ending at 100."""
    try:
        stages = [float(s.strip().rstrip("%")) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise FleetError(f"--stages must be comma-separated percentages like 5,25,100, got {text!r}") from exc
    if not stages or any(not 0 < s <= 100 for s in stages) or stages != sorted(stages) or stages[-1] != 100:
        raise FleetError(f"--stages must increase and end at 100 (e.g. 5,25,100), got {text!r}")
    return stages


def parse_max_failures(text: str) -> float:
    """'2' -> 2 devices; '0.1' or '10%' -> a fraction of the rollout's devices (stored as < 1)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise FleetError(f"--max-failures must be a count (2) or a fraction (0.1 or 10%), got {text!r}") from exc
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise FleetError(f"--max-failures must be a whole count or a fraction below 1, got {text!r}")
    return value


def failure_threshold(max_failures: float, n_devices: int) -> int:
    """Failures allowed before the rollout halts (it halts when failures exceed this)."""
    return int(max_failures) if max_failures >= 1 or max_failures == 0 else math.floor(max_failures * n_devices)


def split_stages(n: int, stages: list[float]) -> list[int]:
    """Cumulative device counts per stage, at least one new device each; empty stages dropped."""
    out: list[int] = []
    for pct in stages:
        count = max(math.ceil(n * pct / 100.0), (out[-1] if out else 0) + 1)
        count = min(count, n)
        if not out or count > out[-1]:
            out.append(count)
    return out


@dataclass
class RolloutPlan:
    """What plan_rollout decided (also stored in the registry)."""

    id: str
    targets: list[tuple[str, int, str]]  # device, stage, bundle sha
    skipped: list[tuple[str, str]]  # device, reason


def plan_rollout(reg: Registry, target: str, devices: list[str] | None = None, group: str | None = None,
                 stages: list[float] | None = None, max_failures: float = 0,
                 stage_timeout: float = DEFAULT_STAGE_TIMEOUT, source_url: str | None = None,
                 stage_soak: float = 0.0) -> RolloutPlan:
    """Create a pending rollout of NAME:VERSION to `devices` or to every device of `group`.

    stage_soak: seconds a stage's devices must stay on the new bundle before the next stage starts
    (and before the rollout succeeds), so a device whose agent undoes the update (probation) still halts it.
    """
    if stage_soak < 0:
        raise FleetError(f"--stage-soak must be >= 0 seconds, got {stage_soak}")
    name, version = parse_target(target)
    bundles = {b.profile: b for b in reg.bundles_named(name, version)}
    if not bundles:
        raise UnknownBundle(f"{name}:{version} is not published: run `edge-fleet publish BUNDLE` first")
    if (devices is None) == (group is None):
        raise FleetError("choose the targets with exactly one of --devices or --group")
    if devices is not None:
        wanted = list(dict.fromkeys(d.strip() for d in devices if d.strip()))
        known = {d["id"]: d for d in reg.devices()}
    else:
        known = {d["id"]: d for d in reg.devices(group)}
        wanted = sorted(known)
    if not wanted:
        raise NoTargets(f"no devices selected (group {group!r} is empty)" if group else "no devices given")

    busy = {row["device_id"]: row["rollout_id"] for row in reg.query(
        "SELECT rd.device_id, rd.rollout_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
        f"WHERE r.status IN ({','.join('?' * len(ACTIVE))}) AND rd.stage >= 0", ACTIVE)}
    eligible: list[tuple[str, BundleRecord]] = []
    skipped: list[tuple[str, str]] = []
    for dev_id in wanted:
        dev = known.get(dev_id)
        if dev is None or not dev.get("profile"):
            skipped.append((dev_id, "unknown device: it has never reported its profile"))
        elif dev["profile"] not in bundles:
            skipped.append((dev_id, f"profile {dev['profile']} does not match the bundle's profile "
                                    f"({', '.join(sorted(bundles))})"))
        elif dev_id in busy:
            raise RolloutConflict(f"device {dev_id} is already in running rollout {busy[dev_id]}; wait for it first")
        else:
            eligible.append((dev_id, bundles[dev["profile"]]))
    if not eligible:
        raise NoTargets("no selected device can take " + f"{name}:{version}: "
                        + "; ".join(f"{d}: {r}" for d, r in skipped))

    for _, b in eligible:
        source_for(b, source_url)  # refuse a bad template now, not mid-rollout
    counts = split_stages(len(eligible), stages or list(DEFAULT_STAGES))
    rid = f"r-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    now = time.time()
    targets: list[tuple[str, int, str]] = []
    start = 0
    for stage, end in enumerate(counts):
        targets += [(d, stage, b.sha256) for d, b in eligible[start:end]]
        start = end
    with reg.transaction():
        reg.execute("INSERT INTO rollouts (id, name, version, status, stages, stage, max_failures, stage_timeout, "
                    "created_at, updated_at, source_url, stage_soak) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rid, name, version, "pending", _json(counts), -1, max_failures, stage_timeout, now, now, source_url,
                     stage_soak))
        for dev_id, stage, sha in targets:
            reg.execute("INSERT INTO rollout_devices (rollout_id, device_id, stage, bundle_sha, status) "
                        "VALUES (?,?,?,?,?)", (rid, dev_id, stage, sha, "waiting"))
        for dev_id, reason in skipped:
            reg.execute("INSERT INTO rollout_devices (rollout_id, device_id, stage, status, reason) "
                        "VALUES (?,?,?,?,?)", (rid, dev_id, -1, "skipped", reason))
    log.info("planned rollout %s of %s:%d to %d devices in stages %s (%d skipped)",
             rid, name, version, len(targets), counts, len(skipped))
    return RolloutPlan(rid, targets, skipped)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


def source_for(bundle: BundleRecord, url_template: str | None) -> dict[str, str]:
    """Where devices fetch `bundle`: MQTT blocks from the fleet, or an HTTP(S) URL made from the
    template's {sha256}, {name}, {version} and {profile} (e.g. a CDN or an nginx in front of the store)."""
    if not url_template:
        return {"type": "mqtt"}
    url = url_template.format(sha256=bundle.sha256, name=bundle.name, version=bundle.version, profile=bundle.profile)
    if not url.startswith(("http://", "https://")):
        raise FleetError(f"--source-url must make an http(s) URL, got {url!r}")
    return {"type": "http", "url": url}


def desired_for(bundle: BundleRecord, deployment_id: str, allow_downgrade: bool = False,
                url_template: str | None = None) -> DesiredState:
    """The DesiredState message that asks a device to run `bundle`."""
    return DesiredState(deployment_id=deployment_id, bundle=bundle.ref, size=bundle.size, profile=bundle.profile,
                        signature=bundle.signature, allow_downgrade=allow_downgrade,
                        source=source_for(bundle, url_template))


class RolloutDriver:
    """Moves pending/running rollouts forward; `publish(topic, payload, retain)` sends MQTT."""

    def __init__(self, reg: Registry, topics: Topics, publish: Publish) -> None:
        self.reg, self.topics, self.publish = reg, topics, publish

    def step(self, now: float | None = None) -> None:
        """One pass over all active rollouts (cheap; call a few times per second)."""
        for r in self.reg.rollouts(ACTIVE):
            try:
                self._step(r, time.time() if now is None else now)
            except Exception:  # noqa: BLE001 - a broken rollout must not stop the others
                log.exception("rollout %s: step failed", r["id"])

    def _set_device(self, rid: str, dev_id: str, status: str, reason: str | None = None, **extra: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in ("status", "reason", *extra))
        self.reg.execute(f"UPDATE rollout_devices SET {cols} WHERE rollout_id=? AND device_id=?",
                         (status, reason, *extra.values(), rid, dev_id))

    def _set_rollout(self, rid: str, now: float, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in (*fields, "updated_at"))
        self.reg.execute(f"UPDATE rollouts SET {cols} WHERE id=?", (*fields.values(), now, rid))

    def _step(self, r: dict[str, Any], now: float) -> None:
        rid = r["id"]
        if r["status"] == "halting":
            self._check_rollbacks(r, now)
            return
        if r["status"] == "pending":
            self._set_rollout(rid, now, status="running")
            self._start_stage(r, 0, now)
            r = self.reg.rollout(rid) or r
        stage = r["stage"]
        targets = [d for d in r["devices"] if d["stage"] >= 0]
        for d in targets:
            if d["stage"] == stage and d["status"] == "sent":
                self._check_device(r, d, now)
            elif d["status"] == "succeeded":
                self._check_still_on_it(r, d, now)
        r = self.reg.rollout(rid) or r
        targets = [d for d in r["devices"] if d["stage"] >= 0]
        failures = sum(d["status"] in FAILED_DEVICE for d in targets)
        threshold = failure_threshold(r["max_failures"], len(targets))
        if failures > threshold:
            self._halt(r, f"{failures} device(s) failed, more than the allowed {threshold}", now)
            return
        soak = r.get("stage_soak") or 0.0
        if all(d["status"] in TERMINAL_DEVICE and (d["status"] != "succeeded" or now - (d["done_at"] or now) >= soak)
               for d in targets if d["stage"] == stage):
            if stage + 1 < len(r["stages"]):
                self._start_stage(r, stage + 1, now)
            else:
                ok = sum(d["status"] == "succeeded" for d in targets)
                self._set_rollout(rid, now, status="succeeded",
                                  reason=f"{ok}/{len(targets)} devices on {r['name']}:{r['version']}"
                                         + (f", {failures} failed" if failures else ""))
                log.info("rollout %s succeeded", rid)

    def _start_stage(self, r: dict[str, Any], stage: int, now: float) -> None:
        rid = r["id"]
        self._set_rollout(rid, now, stage=stage, stage_started_at=now)
        log.info("rollout %s: starting stage %d/%d", rid, stage + 1, len(r["stages"]))
        for d in r["devices"]:
            if d["stage"] != stage or d["status"] != "waiting":
                continue
            dev = self.reg.device(d["device_id"]) or {}
            current = (dev.get("current") or {}).get("sha256")
            bundle = self.reg.bundle_by_sha(d["bundle_sha"])
            if bundle is None:
                self._set_device(rid, d["device_id"], "failed", "bundle was removed from the registry", done_at=now)
                continue
            if current == bundle.sha256:
                self._set_device(rid, d["device_id"], "succeeded", "already running this bundle",
                                 previous_sha=current, sent_at=now, done_at=now)
                continue
            desired = desired_for(bundle, rid, url_template=r.get("source_url"))
            self.publish(self.topics.desired(d["device_id"]), dumps(desired), True)
            self._set_device(rid, d["device_id"], "sent", None, previous_sha=current, sent_at=now)

    def _check_device(self, r: dict[str, Any], d: dict[str, Any], now: float) -> None:
        dev = self.reg.device(d["device_id"]) or {}
        current = (dev.get("current") or {}).get("sha256")
        phase = dev.get("phase")
        if current == d["bundle_sha"] and phase in ("succeeded", "idle"):
            self._set_device(r["id"], d["device_id"], "succeeded", None, done_at=now)
        elif dev.get("deployment_id") == r["id"] and phase in ("failed", "rolled_back"):
            self._set_device(r["id"], d["device_id"], "failed", dev.get("last_error") or f"device reported {phase}",
                             done_at=now)
        elif now - (d["sent_at"] or now) > r["stage_timeout"]:
            self._set_device(r["id"], d["device_id"], "timeout",
                             f"no success within {r['stage_timeout']:.0f}s (last phase: {phase or 'none'})",
                             done_at=now)

    def _check_still_on_it(self, r: dict[str, Any], d: dict[str, Any], now: float) -> None:
        """A device that succeeded may undo the update later (agent probation: the model failed on live inputs)."""
        dev = self.reg.device(d["device_id"]) or {}
        if dev.get("deployment_id") == r["id"] and dev.get("phase") == "rolled_back":
            self._set_device(r["id"], d["device_id"], "failed",
                             f"device rolled back after the switch: {dev.get('last_error') or 'no reason given'}",
                             done_at=now)

    def _halt(self, r: dict[str, Any], reason: str, now: float) -> None:
        rid = r["id"]
        log.warning("rollout %s HALTED: %s; rolling back", rid, reason)
        confirm = False
        for d in r["devices"]:
            if d["stage"] < 0:
                continue
            status = d["status"]
            if status == "waiting":
                self._set_device(rid, d["device_id"], "not_started", "rollout halted before this stage")
                continue
            switched = status == "succeeded" and d["previous_sha"] != d["bundle_sha"]
            if not (switched or status in ("sent", *FAILED_DEVICE)):
                continue
            note, sent = self._revert(rid, d)
            if switched and sent and d["previous_sha"]:  # rolled_back once the device reports its previous bundle
                self._set_device(rid, d["device_id"], "rolling_back", note)
                confirm = True
            elif switched and sent:  # it had no model before: there is no previous bundle to report
                self._set_device(rid, d["device_id"], "rolled_back", note, done_at=now)
            elif switched:
                self._set_device(rid, d["device_id"], "rollback_failed", note, done_at=now)
            elif status == "sent":
                self._set_device(rid, d["device_id"], "cancelled", note, done_at=now)
            else:
                self._set_device(rid, d["device_id"], status, f"{d['reason']}; {note}")
        # While halting, the rollout row is not touched until every roll-back settled: updated_at = halt time.
        self._set_rollout(rid, now, status="halting" if confirm else "halted", reason=reason)

    def _check_rollbacks(self, r: dict[str, Any], now: float) -> None:
        """Halting rollout: a switched device is rolled_back when it reports its previous bundle as current,
        rollback_failed when it reports the roll-back failed, rollback_timeout after stage_timeout."""
        rid, pending = r["id"], 0
        for d in r["devices"]:
            if d["status"] != "rolling_back":
                continue
            dev = self.reg.device(d["device_id"]) or {}
            current, phase = (dev.get("current") or {}).get("sha256"), dev.get("phase")
            if current == d["previous_sha"] and phase in ("succeeded", "idle", "rolled_back"):
                self._set_device(rid, d["device_id"], "rolled_back", f"{d['reason']}; confirmed by the device",
                                 done_at=now)
            elif dev.get("deployment_id") == f"{rid}-rollback" and phase == "failed":
                self._set_device(rid, d["device_id"], "rollback_failed",
                                 f"device could not go back: {dev.get('last_error') or 'no reason given'}", done_at=now)
            elif now - r["updated_at"] > r["stage_timeout"]:
                self._set_device(rid, d["device_id"], "rollback_timeout",
                                 f"{d['reason']}, but the device did not report it within {r['stage_timeout']:.0f}s "
                                 f"(last phase: {phase or 'none'}, presence: {dev.get('presence') or 'unknown'})",
                                 done_at=now)
            else:
                pending += 1
        if not pending:
            self._set_rollout(rid, now, status="halted")
            log.warning("rollout %s halted; roll-backs settled", rid)

    def _revert(self, rid: str, d: dict[str, Any]) -> tuple[str, bool]:
        """Publish the device's previous bundle as its desired state (allow_downgrade); (note, whether sent)."""
        topic = self.topics.desired(d["device_id"])
        prev = self.reg.bundle_by_sha(d["previous_sha"]) if d["previous_sha"] else None
        if prev is not None:
            self.publish(topic, dumps(desired_for(prev, f"{rid}-rollback", allow_downgrade=True)), True)
            return f"desired reset to previous {prev.name}:{prev.version}", True
        if d["previous_sha"] is None:
            self.publish(topic, b"", True)  # no model before: clear the retained desired state
            return "desired state cleared (device had no model before)", True
        return f"previous bundle {d['previous_sha'][:12]} is not in the registry: cannot roll back", False
