"""The registry interface: what the fleet asks of its database, engine-neutral.

Every SQL statement of the fleet lives in an engine module behind this interface
(`sqlite.py` today; a PostgreSQL engine is one more module with the same methods and its
own migrations folder). Callers get typed records back (records.py) and never see SQL.
Engines must be safe to call from several threads (the MQTT thread records reports while
the rollout thread drives rollouts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

from edge_agent.ota.protocol import ReportedState, Telemetry

from ..errors import RegistryUnreachable

from .records import (AuditEntry, BundleRecord, DeviceEvent, DeviceFilter, DeviceRecord, LatencySample, Page,
                      RolloutRecord, RolloutStatus, TargetStatus, TokenRecord)


class Registry(ABC):
    """Bundles, devices and rollouts of one fleet. Open one with `open_registry()`."""

    #: where published bundle files are kept, named by SHA-256 (a folder, whatever the engine)
    store_dir: Path
    #: the errors that mean the database is away (down, unreachable, locked too long, its disk failing), as opposed to
    #: a bug or data it refuses: the fleet server waits for it and reads the devices' retained reports again
    UNAVAILABLE: tuple[type[Exception], ...] = (RegistryUnreachable, OSError)

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives, for messages (a file path or a URL without password)."""

    @abstractmethod
    def schema_version(self) -> int:
        """The highest migration applied."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bundles ----------------------------------------------------------------------------

    @abstractmethod
    def add_bundle(self, rec: BundleRecord) -> None:
        """Store a published bundle (the same SHA-256 again replaces the row)."""

    @abstractmethod
    def bundle_by_sha(self, sha256: str) -> BundleRecord | None: ...

    @abstractmethod
    def bundles_named(self, name: str, version: int) -> list[BundleRecord]:
        """NAME:VERSION for every profile it was published for, ordered by profile."""

    @abstractmethod
    def bundles(self) -> list[BundleRecord]:
        """All bundles, ordered by name, version, profile."""

    @abstractmethod
    def bundles_page(self, limit: int, offset: int, name: str | None = None) -> Page[BundleRecord]:
        """One page of bundles (newest version first), optionally of one name."""

    # -- devices ----------------------------------------------------------------------------

    @abstractmethod
    def record_reported(self, state: ReportedState, now: float | None = None) -> None:
        """Store a device's reported state (creates the device on first contact)."""

    @abstractmethod
    def record_presence(self, device_id: str, state: str, now: float | None = None) -> None:
        """online/offline; `online` also counts as seen."""

    @abstractmethod
    def record_telemetry(self, device_id: str, tel: Telemetry, now: float | None = None) -> None: ...

    @abstractmethod
    def set_group(self, device_id: str, group: str | None) -> None:
        """Put a device in a group (None: in none); creates an unknown device."""

    @abstractmethod
    def device(self, device_id: str) -> DeviceRecord | None: ...

    @abstractmethod
    def devices_by_id(self, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
        """The known ones of `device_ids`, in one query (the rollout driver watches 1,000 at a time)."""

    @abstractmethod
    def devices(self, group: str | None = None) -> list[DeviceRecord]:
        """All devices (or one group's), ordered by id."""

    #: what devices_page() may sort by
    DEVICE_SORTS = ("id", "profile", "group", "model", "version", "phase", "presence", "last_seen", "latency")

    @abstractmethod
    def devices_page(self, where: DeviceFilter, limit: int, offset: int, sort: str = "id",
                     descending: bool = False) -> Page[DeviceRecord]:
        """One page of the devices matching `where`, sorted by one of DEVICE_SORTS."""

    @abstractmethod
    def device_counts(self) -> dict[str, dict[str, int]]:
        """{"phase": {phase: n}, "presence": {presence: n}, "total": {"devices": n}} for the overview."""

    @abstractmethod
    def groups_page(self, limit: int, offset: int) -> Page[tuple[str, int]]:
        """(group, number of devices) ordered by group name."""

    @abstractmethod
    def device_events(self, device_id: str, limit: int, offset: int) -> Page[DeviceEvent]:
        """A device's update history (changes of phase, bundle, deployment or error), newest first."""

    @abstractmethod
    def latency_samples(self, device_id: str, limit: int) -> list[LatencySample]:
        """The device's latest `limit` latency samples, oldest first (for a plot)."""

    @abstractmethod
    def change_stamp(self) -> tuple[float, ...]:
        """A cheap value that changes whenever devices, bundles or rollouts change (live console updates)."""

    # -- rollouts ---------------------------------------------------------------------------

    @abstractmethod
    def create_rollout(self, rollout: RolloutRecord) -> None:
        """Store a new rollout with its targets in one transaction.

        Raises RolloutConflict when a target (stage >= 0) is in another active rollout by then,
        so two deploys racing for one device cannot both win.
        """

    @abstractmethod
    def busy_devices(self, device_ids: Iterable[str]) -> dict[str, str]:
        """{device id: rollout id} for those of `device_ids` that are targets of an active rollout."""

    @abstractmethod
    def rollout(self, rollout_id: str) -> RolloutRecord | None: ...

    @abstractmethod
    def rollouts(self, statuses: Iterable[RolloutStatus] | None = None) -> list[RolloutRecord]:
        """Rollouts (all, or those in `statuses`), oldest first."""

    @abstractmethod
    def rollouts_page(self, limit: int, offset: int, statuses: Iterable[RolloutStatus] | None = None,
                      device_id: str | None = None) -> Page[RolloutRecord]:
        """One page of rollouts, newest first; only those in `statuses` / targeting `device_id` if given."""

    @abstractmethod
    def requested_rollouts(self) -> list[RolloutRecord]:
        """Rollouts with an operator's request the server has not applied yet (any status)."""

    @abstractmethod
    def request_rollout(self, rollout_id: str, request: str, by: str) -> None:
        """Store an operator's request (halt, resume, rollback); the fleet server applies it."""

    @abstractmethod
    def clear_request(self, rollout_id: str, request: str, refused: str | None = None) -> None:
        """Forget `request` unless another request replaced it meanwhile; `refused`: why it was not applied
        (kept as the rollout's `request_refused`, for whoever waits for the request)."""

    @abstractmethod
    def update_rollout(self, rollout_id: str, now: float, *, status: RolloutStatus | None = None,
                       stage: int | None = None, stage_started_at: float | None = None,
                       reason: str | None = None) -> None:
        """Set the given fields (None leaves a field as it is) and updated_at = now."""

    @abstractmethod
    def update_target(self, rollout_id: str, device_id: str, status: TargetStatus, reason: str | None, *,
                      previous_sha: str | None = None, sent_at: float | None = None,
                      done_at: float | None = None, shadow: dict[str, Any] | None = None) -> None:
        """Set a target's status and reason; previous_sha/sent_at/done_at/shadow only when given."""

    # -- API tokens and the audit log -----------------------------------------------------------

    @abstractmethod
    def add_token(self, rec: TokenRecord) -> None:
        """Store a new token (TokenExists when a live token has the name)."""

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abstractmethod
    def tokens(self) -> list[TokenRecord]:
        """All tokens (revoked ones too), ordered by name."""

    @abstractmethod
    def revoke_token(self, name: str, now: float) -> bool:
        """Revoke by name; False when there is no such live token."""

    @abstractmethod
    def touch_token(self, name: str, now: float) -> None:
        """Remember when a token was last used."""

    @abstractmethod
    def add_audit(self, actor: str, role: str | None, action: str, target: str | None, detail: dict,
                  outcome: str, now: float | None = None) -> None: ...

    @abstractmethod
    def audit_page(self, limit: int, offset: int, actor: str | None = None,
                   action: str | None = None) -> Page[AuditEntry]:
        """The audit log, newest first."""

    # -- several fleet servers ------------------------------------------------------------------

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        """Take or renew the lease `name` for `ttl` seconds; False while another holder's lease runs.

        The fleet servers sharing a registry drive rollouts only while they hold the "rollouts"
        lease, so exactly one does; when it dies its lease runs out and another takes over."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (a clean shutdown: another server takes over at once)."""
