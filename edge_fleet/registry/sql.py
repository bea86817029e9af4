"""The SQL engines' shared body: every query of the Registry interface, written once.

SQLite (sqlite.py) and PostgreSQL (postgres.py) run the same statements with `?` placeholders;
where the two dialects differ (JSON access, upserts, write locks, pruning, the change stamp) an
engine overrides one small hook below. An engine provides `_db` (a DB-API-like connection whose
`execute(sql, params)` returns a cursor and whose rows allow `row["col"]`, `row[0]` and
`dict(row)`), `_lock`, `store_dir` and its migrations. One connection per Registry, guarded by a
lock, so the MQTT and rollout threads of the server can share it.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from edge_agent.ota.protocol import BundleRef, ReportedState, Telemetry
from edge_agent.ota.report_order import ReportStamp, supersedes

from ..errors import RolloutConflict, VersionConflict
from .base import Registry
from .records import (ACTIVE_ROLLOUT, BundleRecord, DeviceRecord, Page, RolloutRecord, RolloutStatus,
                      RolloutTarget, TargetStatus, latency_ms)
from .sql_access import SqlAccess
from .sql_views import SqlViews, _ref

HISTORY_KEEP = 500  # update-history rows kept per device
LATENCY_KEEP = 720  # latency samples kept per device (a plot's worth)


def _ref_json(ref: BundleRef | None) -> str | None:
    return json.dumps({"name": ref.name, "version": ref.version, "sha256": ref.sha256}) if ref else None


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value is not None else None


def _loads(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """`items` in slices small enough for one statement's parameters: SQLite before 3.32 (Ubuntu 20.04, JetPack 5)
    allows 999, later builds 32766, PostgreSQL 65535; a deploy to a group of 1,000 devices hit the first."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(items: tuple | list) -> str:
    return ",".join("?" * len(items))


class SqlRegistry(SqlViews, SqlAccess, Registry):
    """The engine-neutral body; subclasses open `_db` and apply their migrations."""

    _db: Any
    _lock: threading.RLock
    #: statements run so far (the scale benchmark reports queries per device)
    queries: int = 0
    #: the engine's "rowid" for pruning the newest rows of a table
    _ROWID = "rowid"
    #: BEGIN of a transaction that writes and must not interleave with another writer
    _BEGIN_WRITE = "BEGIN IMMEDIATE"
    #: BEGIN of a read-only transaction that sees one snapshot
    _BEGIN_READ = "BEGIN"
    #: suffix of a SELECT that locks the rows it reads until the transaction ends
    _FOR_UPDATE = ""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "SqlRegistry":
        return self

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_version")[0][0] or 0)

    # -- engine hooks ---------------------------------------------------------------------------

    def _insert_id(self, sql: str, params: tuple) -> int:
        """Run an INSERT and return the new row's id (rowid)."""
        return int(self._execute(sql, params).lastrowid)

    # -- low level --------------------------------------------------------------------------

    def _execute(self, sql: str, params: tuple | list = ()) -> Any:
        with self._lock:
            self.queries += 1
            return self._db.execute(sql, params)

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            self.queries += 1
            self._db.executemany(sql, rows)

    def _query(self, sql: str, params: tuple | list = ()) -> list[Any]:
        with self._lock:
            self.queries += 1
            return self._db.execute(sql, params).fetchall()

    # -- bundles ----------------------------------------------------------------------------

    def add_bundle(self, rec: BundleRecord) -> None:
        """The same file again updates its row. Another file under a stored NAME:VERSION for the profile is
        refused here too, not only by publish's check before it: SQLite's INSERT OR REPLACE deleted the row of the
        first of two publishes racing with different files, which had been told it was published."""
        cols = ("name", "version", "profile", "size", "manifest", "signature", "key_id", "path", "published_at")
        try:
            self._execute("INSERT INTO bundles VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (sha256) DO UPDATE SET "
                          + ", ".join(f"{c}=EXCLUDED.{c}" for c in cols),
                          (rec.sha256, rec.name, rec.version, rec.profile, rec.size, json.dumps(rec.manifest),
                           json.dumps(rec.signature), rec.key_id, str(rec.path), rec.published_at))
        except self._INTEGRITY_ERROR:  # UNIQUE (name, version, profile)
            stored = next((b.sha256 for b in self.bundles_named(rec.name, rec.version) if b.profile == rec.profile), "")
            raise VersionConflict.immutable(rec.name, rec.version, rec.profile, stored) from None

    @staticmethod
    def _bundle(row: Any) -> BundleRecord:
        return BundleRecord(row["sha256"], row["name"], row["version"], row["profile"], row["size"],
                            json.loads(row["manifest"]), json.loads(row["signature"]), row["key_id"],
                            Path(row["path"]), row["published_at"])

    def bundle_by_sha(self, sha256: str) -> BundleRecord | None:
        rows = self._query("SELECT * FROM bundles WHERE sha256=?", (sha256,))
        return self._bundle(rows[0]) if rows else None

    def bundles_named(self, name: str, version: int) -> list[BundleRecord]:
        return [self._bundle(r) for r in self._query(
            "SELECT * FROM bundles WHERE name=? AND version=? ORDER BY profile", (name, version))]

    def bundles(self) -> list[BundleRecord]:
        return [self._bundle(r) for r in self._query("SELECT * FROM bundles ORDER BY name, version, profile")]

    # -- devices ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, serialize: str | None = None) -> Iterator[None]:
        """A write transaction; `serialize` names a lock that writers of the same kind take first
        (SQLite's BEGIN IMMEDIATE already serializes all writers)."""
        with self._lock:
            self._execute(self._BEGIN_WRITE)
            try:
                if serialize:
                    self._serialize(serialize)
                yield
            except BaseException:
                self._execute("ROLLBACK")
                raise
            self._execute("COMMIT")

    def _serialize(self, key: str) -> None:
        """Hold a lock named `key` until the transaction ends (no-op where BEGIN already did)."""

    def _prune(self, table: str, order: str, device_id: str, keep: int, last_id: int) -> None:
        """Keep the newest `keep` rows of one device in `table` (checked every 50th row, so it stays cheap)."""
        if last_id % 50 == 0:
            r = self._ROWID
            self._execute(f"DELETE FROM {table} WHERE device_id=? AND {r} NOT IN (SELECT {r} FROM {table} "
                          f"WHERE device_id=? ORDER BY {order} DESC LIMIT ?)", (device_id, device_id, keep))

    # -- devices ----------------------------------------------------------------------------

    def _update_device(self, device_id: str, assignments: str, params: tuple, where: str = "",
                       where_params: tuple = ()) -> int:
        """UPDATE one device (creating its row first: first contact); the number of rows changed."""
        with self._lock:
            self._execute("INSERT INTO devices (id) VALUES (?) ON CONFLICT DO NOTHING", (device_id,))
            return self._execute(f"UPDATE devices SET {assignments} WHERE id=?{where}",
                                 (*params, device_id, *where_params)).rowcount

    def record_reported(self, state: ReportedState, now: float | None = None) -> None:
        """Store the reported state; a change of phase, bundle, deployment or error also becomes a
        row of the device's update history (progress ticks do not).

        Duplicates change nothing; a report older than the stored one (by its boot id and sequence
        number, or the device's clock from agents that send none: report_order.supersedes) arrived
        out of order and is ignored, so a late "downloading" never hides a "succeeded". Several
        servers may record reports of one device at once: the row is locked for the read-compare-write."""
        now = time.time() if now is None else now
        current = _ref_json(state.current)
        with self._transaction():
            self._execute("INSERT INTO devices (id) VALUES (?) ON CONFLICT DO NOTHING", (state.device_id,))
            before = self._query("SELECT phase, current, deployment_id, last_error, reported_updated_at, "
                                 f"reported_boot_id, reported_seq FROM devices WHERE id=?{self._FOR_UPDATE}",
                                 (state.device_id,))[0]
            stored = None if before["reported_updated_at"] is None else ReportStamp(
                before["reported_updated_at"], before["reported_boot_id"], before["reported_seq"])
            if not supersedes(ReportStamp(state.updated_at, state.boot_id, state.seq), stored):
                return  # out of order: a newer report is already stored
            self._update_device(
                state.device_id,
                "profile=?, current=?, previous=?, target=?, phase=?, deployment_id=?, progress=?, last_error=?, "
                "agent_version=?, reported_at=?, last_seen=?, reported_updated_at=?, reported_boot_id=?, "
                "reported_seq=?, shadow=?, drift=?",
                (state.profile, current, _ref_json(state.previous), _ref_json(state.target),
                 state.phase, state.deployment_id, state.progress, state.last_error, state.agent_version, now, now,
                 state.updated_at, state.boot_id, state.seq, _json(state.shadow), _json(state.drift)),
            )
            if tuple(before)[:4] != (state.phase, current, state.deployment_id, state.last_error):
                last = self._insert_id("INSERT INTO device_events (device_id, at, phase, current, deployment_id, "
                                       "last_error) VALUES (?,?,?,?,?,?)",
                                       (state.device_id, now, state.phase, current, state.deployment_id,
                                        state.last_error))
                self._prune("device_events", "id", state.device_id, HISTORY_KEEP, last)

    def record_presence(self, device_id: str, state: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if state == "online":
            self._update_device(device_id, "presence=?, presence_at=?, last_seen=?", (state, now, now))
        else:
            self._update_device(device_id, "presence=?, presence_at=?", (state, now))

    def record_telemetry(self, device_id: str, tel: Telemetry, now: float | None = None) -> None:
        now = time.time() if now is None else now
        p50, p99 = (latency_ms(tel.latency, k) for k in ("p50", "p99"))
        with self._lock:
            self._update_device(device_id, "latency=?, inferences=?, errors=?, telemetry_at=?, last_seen=?",
                                (json.dumps(tel.latency), tel.inferences, tel.errors, now, now))
            if p50 is not None or p99 is not None:
                last = self._insert_id("INSERT INTO latency_samples (device_id, at, p50, p99) VALUES (?,?,?,?)",
                                       (device_id, now, p50, p99))
                self._prune("latency_samples", "at", device_id, LATENCY_KEEP, last)

    def set_group(self, device_id: str, group: str | None) -> None:
        self._update_device(device_id, "grp=?", (group,))

    def device(self, device_id: str) -> DeviceRecord | None:
        rows = self._query("SELECT * FROM devices WHERE id=?", (device_id,))
        return self._device(rows[0]) if rows else None

    def devices_by_id(self, device_ids: Iterable[str]) -> dict[str, DeviceRecord]:
        found: dict[str, DeviceRecord] = {}
        for chunk in _chunks(list(device_ids)):
            for row in self._query(f"SELECT * FROM devices WHERE id IN ({_marks(chunk)})", chunk):
                found[row["id"]] = self._device(row)
        return found

    def devices(self, group: str | None = None) -> list[DeviceRecord]:
        if group is None:
            rows = self._query("SELECT * FROM devices ORDER BY id")
        else:
            rows = self._query("SELECT * FROM devices WHERE grp=? ORDER BY id", (group,))
        return [self._device(r) for r in rows]

    @staticmethod
    def _device(row: Any) -> DeviceRecord:
        d: dict[str, Any] = dict(row)
        d["group"] = d.pop("grp")
        for key in ("reported_updated_at", "reported_boot_id", "reported_seq"):  # only for ordering reports
            d.pop(key, None)
        for key in ("current", "previous", "target"):
            d[key] = _ref(d[key])
        d["latency"] = json.loads(d["latency"]) if d["latency"] else {}
        d["shadow"], d["drift"] = _loads(d.get("shadow")), _loads(d.get("drift"))
        return DeviceRecord(**d)

    # -- rollouts ---------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRecord) -> None:
        r = rollout
        # one deploy at a time decides which devices are free: two racing for a device cannot both win
        with self._transaction(serialize="create_rollout"):
            busy = self._busy([t.device_id for t in r.targets])
            if busy:
                dev, other = next(iter(busy.items()))
                raise RolloutConflict(f"device {dev} is already in running rollout {other}; wait for it first")
            self._execute(
                "INSERT INTO rollouts (id, name, version, status, stages, stage, stage_started_at, max_failures, "
                "stage_timeout, reason, created_at, updated_at, source_url, stage_soak, created_by, shadow) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.id, r.name, r.version, r.status, json.dumps(list(r.stages)), r.stage, r.stage_started_at,
                 r.max_failures, r.stage_timeout, r.reason, r.created_at, r.updated_at, r.source_url,
                 r.stage_soak, r.created_by, _json(r.shadow)))
            self._executemany(
                "INSERT INTO rollout_devices (rollout_id, device_id, stage, bundle_sha, previous_sha, status, "
                "reason, sent_at, done_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [(r.id, t.device_id, t.stage, t.bundle_sha, t.previous_sha, t.status, t.reason, t.sent_at,
                  t.done_at) for t in r.devices])

    def busy_devices(self, device_ids: Iterable[str]) -> dict[str, str]:
        with self._lock:
            return self._busy(list(device_ids))

    def _busy(self, device_ids: list[str]) -> dict[str, str]:
        busy: dict[str, str] = {}
        for chunk in _chunks(device_ids):
            rows = self._query(
                "SELECT rd.device_id, rd.rollout_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
                f"WHERE r.status IN ({_marks(ACTIVE_ROLLOUT)}) AND rd.stage >= 0 AND rd.device_id IN ({_marks(chunk)})",
                (*ACTIVE_ROLLOUT, *chunk))
            busy.update((row["device_id"], row["rollout_id"]) for row in rows)
        return busy

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        found = self._rollouts("WHERE id=?", (rollout_id,))
        return found[0] if found else None

    def rollouts(self, statuses: Iterable[RolloutStatus] | None = None) -> list[RolloutRecord]:
        wanted = tuple(statuses or ())
        if wanted:
            return self._rollouts(f"WHERE status IN ({_marks(wanted)})", wanted)
        return self._rollouts("", ())

    def rollouts_page(self, limit: int, offset: int, statuses: Iterable[RolloutStatus] | None = None,
                      device_id: str | None = None) -> Page[RolloutRecord]:
        wanted = tuple(statuses or ())
        where, params = [], []
        if wanted:
            where.append(f"status IN ({_marks(wanted)})")
            params += wanted
        if device_id is not None:
            where.append("id IN (SELECT rollout_id FROM rollout_devices WHERE device_id=?)")
            params.append(device_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self._query(f"SELECT COUNT(*) FROM rollouts {clause}", params)[0][0]
        items = self._rollouts(f"{clause} ORDER BY created_at DESC LIMIT ? OFFSET ?", (*params, limit, offset),
                               order=False)
        return Page(items, total, limit, offset)

    def requested_rollouts(self) -> list[RolloutRecord]:
        return self._rollouts("WHERE request IS NOT NULL", ())

    def request_rollout(self, rollout_id: str, request: str, by: str) -> None:
        self._execute("UPDATE rollouts SET request=?, request_by=?, request_refused=NULL WHERE id=?",
                      (request, by, rollout_id))

    def clear_request(self, rollout_id: str, request: str, refused: str | None = None) -> None:
        self._execute("UPDATE rollouts SET request=NULL, request_by=NULL, request_refused=? WHERE id=? AND request=?",
                      (refused, rollout_id, request))

    def _rollouts(self, where: str, params: tuple, order: bool = True) -> list[RolloutRecord]:
        """Rollouts matching `where` (oldest first unless `where` orders them) with their targets,
        in one read transaction (a consistent view)."""
        sql = f"SELECT * FROM rollouts {where}" + (" ORDER BY created_at" if order else "")
        with self._lock:
            self._execute(self._BEGIN_READ)
            try:
                rows = self._query(sql, params)
                ids = [r["id"] for r in rows]
                targets: dict[str, list[RolloutTarget]] = {i: [] for i in ids}
                for chunk in _chunks(ids):
                    for t in self._query(f"SELECT * FROM rollout_devices WHERE rollout_id IN ({_marks(chunk)}) "
                                         "ORDER BY stage, device_id", chunk):
                        targets[t["rollout_id"]].append(RolloutTarget(**{
                            **dict(t), "status": TargetStatus(t["status"]), "shadow": _loads(t["shadow"])}))
            finally:
                self._execute("COMMIT")
        return [RolloutRecord(**{**dict(r), "status": RolloutStatus(r["status"]),
                                 "stages": tuple(json.loads(r["stages"])), "devices": tuple(targets[r["id"]]),
                                 "shadow": _loads(r["shadow"])})
                for r in rows]

    def update_rollout(self, rollout_id: str, now: float, *, status: RolloutStatus | None = None,
                       stage: int | None = None, stage_started_at: float | None = None,
                       reason: str | None = None) -> None:
        fields = {k: v for k, v in (("status", status), ("stage", stage), ("stage_started_at", stage_started_at),
                                    ("reason", reason)) if v is not None}
        cols = ", ".join(f"{k}=?" for k in (*fields, "updated_at"))
        self._execute(f"UPDATE rollouts SET {cols} WHERE id=?", (*fields.values(), now, rollout_id))

    def update_target(self, rollout_id: str, device_id: str, status: TargetStatus, reason: str | None, *,
                      previous_sha: str | None = None, sent_at: float | None = None,
                      done_at: float | None = None, shadow: dict[str, Any] | None = None) -> None:
        extra = {k: v for k, v in (("previous_sha", previous_sha), ("sent_at", sent_at), ("done_at", done_at),
                                   ("shadow", _json(shadow))) if v is not None}
        cols = ", ".join(f"{k}=?" for k in ("status", "reason", *extra))
        self._execute(f"UPDATE rollout_devices SET {cols} WHERE rollout_id=? AND device_id=?",
                      (status, reason, *extra.values(), rollout_id, device_id))

    # -- leases ---------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        cur = self._execute("INSERT INTO leases (name, holder, expires_at) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE "
                            "SET holder=excluded.holder, expires_at=excluded.expires_at "
                            "WHERE leases.holder=excluded.holder OR leases.expires_at < ?", (name, holder, now + ttl, now))
        return cur.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        self._execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))
