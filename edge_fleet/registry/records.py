"""What the registry stores and hands back: typed, immutable records and the status vocabularies.

Callers never see rows or SQL; every engine (SQLite today, PostgreSQL later) returns these.
The status enums are the values stored in the database; which status may follow which is
rollout policy and lives in edge_fleet/rollout/states.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge_agent.ota.protocol import BundleRef

T = TypeVar("T")


class RolloutStatus(StrEnum):
    """Where a rollout is. PENDING/RUNNING/PAUSED/HALTING are active: the fleet server drives them."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"  # halted by an operator: no new stage starts until resumed; in-flight devices finish
    HALTING = "halting"  # halted; waiting for switched devices to confirm their roll-back
    HALTED = "halted"
    SUCCEEDED = "succeeded"


class TargetStatus(StrEnum):
    """Where one device of a rollout is."""

    WAITING = "waiting"  # its stage has not started
    SENT = "sent"  # desired state published, no outcome yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # never a target: unknown device or no bundle for its profile (stage -1)
    ROLLING_BACK = "rolling_back"  # halted after it switched: sent its previous bundle, awaiting the report
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    ROLLBACK_TIMEOUT = "rollback_timeout"
    CANCELLED = "cancelled"  # halted while its update was in flight
    NOT_STARTED = "not_started"  # halted before its stage


def latency_ms(latency: dict[str, Any], key: str) -> float | None:
    """A latency percentile (ms) from a device's telemetry, sent as `p50` or `p50_ms`."""
    v = latency.get(key, latency.get(f"{key}_ms"))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


ACTIVE_ROLLOUT = (RolloutStatus.PENDING, RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTING)


@dataclass(frozen=True)
class BundleRecord:
    """A published bundle as the registry knows it."""

    sha256: str
    name: str
    version: int
    profile: str
    size: int
    manifest: dict[str, Any]
    signature: dict[str, Any]
    key_id: str
    path: Path
    published_at: float

    @property
    def ref(self) -> BundleRef:
        return BundleRef(name=self.name, version=self.version, sha256=self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "profile": self.profile, "sha256": self.sha256,
                "size": self.size, "key_id": self.key_id, "path": str(self.path), "published_at": self.published_at}


@dataclass(frozen=True)
class DeviceRecord:
    """A device as last heard of: its reported state, presence, telemetry and group."""

    id: str
    profile: str | None = None
    group: str | None = None
    current: BundleRef | None = None
    previous: BundleRef | None = None
    target: BundleRef | None = None
    phase: str | None = None  # the agent's update phase as reported (idle, downloading, succeeded, failed, ...)
    deployment_id: str | None = None
    progress: float | None = None
    last_error: str | None = None
    agent_version: str | None = None
    reported_at: float | None = None
    last_seen: float | None = None
    presence: str | None = None
    presence_at: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    inferences: int | None = None
    errors: int | None = None
    telemetry_at: float | None = None
    shadow: dict[str, Any] | None = None  # its last shadow run's report (edge_agent.monitor.shadow.ShadowReport)
    drift: dict[str, Any] | None = None  # its served model's drift state: state, worst feature, PSI, window

    @property
    def current_sha(self) -> str | None:
        return self.current.sha256 if self.current else None


@dataclass(frozen=True)
class RolloutTarget:
    """One device of a rollout: its stage (-1 when skipped), bundle and outcome."""

    rollout_id: str
    device_id: str
    stage: int
    bundle_sha: str | None
    previous_sha: str | None
    status: TargetStatus
    reason: str | None = None
    sent_at: float | None = None
    done_at: float | None = None
    shadow: dict[str, Any] | None = None  # the device's shadow report for this rollout, once it ran one


@dataclass(frozen=True)
class RolloutRecord:
    """A staged rollout of NAME:VERSION and its targets (ordered by stage, then device id)."""

    id: str
    name: str
    version: int
    status: RolloutStatus
    stages: tuple[int, ...]  # cumulative device counts per stage
    stage: int  # current stage, -1 before the first
    stage_started_at: float | None
    max_failures: float
    stage_timeout: float
    reason: str | None
    created_at: float
    updated_at: float
    source_url: str | None
    stage_soak: float
    devices: tuple[RolloutTarget, ...] = ()
    created_by: str | None = None  # the API token's name, or local:USER for the CLI on the server
    request: str | None = None  # an operator's pending request (halt/resume/rollback), applied by the server
    request_by: str | None = None
    request_refused: str | None = None  # why the server did not apply the last request (None: applied or pending)
    shadow: dict[str, Any] | None = None  # the shadow gate sent to devices (edge_agent.ota.protocol.ShadowGate)

    @property
    def targets(self) -> tuple[RolloutTarget, ...]:
        """The devices that take part (skipped ones excluded)."""
        return tuple(d for d in self.devices if d.stage >= 0)

    def target(self, device_id: str) -> RolloutTarget:
        return next(d for d in self.devices if d.device_id == device_id)

    def to_json(self) -> dict[str, Any]:
        """The shape `edge-fleet deploy/rollouts --json` prints."""
        out = asdict(self)
        out["stages"] = list(self.stages)
        out["devices"] = [asdict(d) for d in self.devices]
        return out


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a listing shows; None means any. `latency_*` compare the latest p50 in ms."""

    profile: str | None = None
    group: str | None = None
    model: str | None = None
    version: int | None = None
    phase: str | None = None
    presence: str | None = None
    latency_min: float | None = None
    latency_max: float | None = None
    search: str | None = None  # a substring of the device id


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the number of rows the whole listing has."""

    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class DeviceEvent:
    """One change of a device's update state as it reported it (its update history)."""

    id: int
    device_id: str
    at: float
    phase: str | None
    current: BundleRef | None
    deployment_id: str | None
    last_error: str | None


@dataclass(frozen=True)
class LatencySample:
    """A device's p50/p99 inference latency (ms) at one telemetry report."""

    at: float
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: its name, role and hash (the secret is shown once, never stored)."""

    name: str
    role: str
    token_hash: str
    created_at: float
    created_by: str | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["token_hash"]
        return out


@dataclass(frozen=True)
class AuditEntry:
    """Who did what to which object, when, and how it ended (ok, or the refusal)."""

    id: int
    at: float
    actor: str
    role: str | None
    action: str
    target: str | None
    detail: dict[str, Any]
    outcome: str
