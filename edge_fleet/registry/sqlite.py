"""The SQLite registry engine (stdlib sqlite3): the embedded default, one file per fleet.

The server process and the `edge-fleet` CLI open the same file; WAL mode and a busy timeout
let them work side by side. One connection per Registry, guarded by a lock, so the MQTT and
rollout threads of the server can share it. Migrations come from migrations/sqlite/*.sql.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from edge_agent.ota.protocol import BundleRef, ReportedState, Telemetry

from ..errors import RolloutConflict
from .base import Registry
from .migrations import Migration, load_migrations, pending
from .records import (ACTIVE_ROLLOUT, BundleRecord, DeviceRecord, Page, RolloutRecord, RolloutStatus,
                      RolloutTarget, TargetStatus, latency_ms)
from .sqlite_access import SqliteAccess
from .sqlite_views import SqliteViews, _ref

log = logging.getLogger(__name__)

# Columns a registry file made before versioned migrations may have, and the migration that adds each.
_LEGACY_COLUMNS = (("source_url", 2), ("stage_soak", 3))
HISTORY_KEEP = 500  # update-history rows kept per device
LATENCY_KEEP = 720  # latency samples kept per device (a plot's worth)


def _ref_json(ref: BundleRef | None) -> str | None:
    return json.dumps({"name": ref.name, "version": ref.version, "sha256": ref.sha256}) if ref else None


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value is not None else None


def _marks(items: tuple | list) -> str:
    return ",".join("?" * len(items))


class SqliteRegistry(SqliteViews, SqliteAccess, Registry):
    """Thread-safe access to one SQLite registry file (one connection guarded by a lock)."""

    def __init__(self, db_path: Path, store_dir: Path | None = None) -> None:
        self.db_path = Path(db_path).expanduser()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store_dir = Path(store_dir) if store_dir else self.db_path.parent / "bundles"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable on commit except at power loss; no fsync per report
        self._migrate(load_migrations("sqlite"))

    @property
    def location(self) -> str:
        return str(self.db_path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "SqliteRegistry":
        return self

    # -- schema -----------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self, migrations: list[Migration]) -> None:
        """Apply pending migrations under one write lock, so two processes opening a new file
        at once do not both apply them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if not self._has_table("schema_version"):
                    self._db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
                    self._adopt_legacy_file()
                current = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                for m in pending(current, migrations, str(self.db_path)):
                    for statement in _statements(m.sql):
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO schema_version VALUES (?, ?)", (m.version, time.time()))
                    # a new file is not news; upgrading an existing one is
                    log.log(logging.INFO if current else logging.DEBUG, "registry %s: applied migration %04d_%s",
                            self.db_path, m.version, m.name)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def _adopt_legacy_file(self) -> None:
        """A file made before versioned migrations: count the migrations its tables already show."""
        if not self._has_table("rollouts"):
            return  # a new file
        cols = {r["name"] for r in self._db.execute("PRAGMA table_info(rollouts)")}
        version = 1
        for column, migration in _LEGACY_COLUMNS:
            if column not in cols:
                break
            version = migration
        for v in range(1, version + 1):
            self._db.execute("INSERT INTO schema_version VALUES (?, ?)", (v, time.time()))
        log.info("registry %s: adopted a pre-migration file at schema version %d", self.db_path, version)

    # -- low level --------------------------------------------------------------------------

    def _execute(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- bundles ----------------------------------------------------------------------------

    def add_bundle(self, rec: BundleRecord) -> None:
        self._execute(
            "INSERT OR REPLACE INTO bundles VALUES (?,?,?,?,?,?,?,?,?,?)",
            (rec.sha256, rec.name, rec.version, rec.profile, rec.size, json.dumps(rec.manifest),
             json.dumps(rec.signature), rec.key_id, str(rec.path), rec.published_at),
        )

    @staticmethod
    def _bundle(row: sqlite3.Row) -> BundleRecord:
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

    def _update_device(self, device_id: str, assignments: str, params: tuple) -> None:
        """UPDATE one device, creating its row first (first contact)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO devices (id) VALUES (?)", (device_id,))
            self._db.execute(f"UPDATE devices SET {assignments} WHERE id=?", (*params, device_id))

    def record_reported(self, state: ReportedState, now: float | None = None) -> None:
        """Store the reported state; a change of phase, bundle, deployment or error also becomes a
        row of the device's update history (progress ticks do not)."""
        now = time.time() if now is None else now
        current = _ref_json(state.current)
        with self._lock:
            before = self._db.execute("SELECT phase, current, deployment_id, last_error FROM devices WHERE id=?",
                                      (state.device_id,)).fetchone()
            self._update_device(
                state.device_id,
                "profile=?, current=?, previous=?, target=?, phase=?, deployment_id=?, progress=?, last_error=?, "
                "agent_version=?, reported_at=?, last_seen=?, shadow=?, drift=?",
                (state.profile, current, _ref_json(state.previous), _ref_json(state.target),
                 state.phase, state.deployment_id, state.progress, state.last_error, state.agent_version, now, now,
                 _json(state.shadow), _json(state.drift)),
            )
            if before is None or tuple(before) != (state.phase, current, state.deployment_id, state.last_error):
                self._db.execute("INSERT INTO device_events (device_id, at, phase, current, deployment_id, last_error) "
                                 "VALUES (?,?,?,?,?,?)",
                                 (state.device_id, now, state.phase, current, state.deployment_id, state.last_error))
                self._prune("device_events", "id", state.device_id, HISTORY_KEEP)

    def _prune(self, table: str, order: str, device_id: str, keep: int) -> None:
        """Keep the newest `keep` rows of one device in `table` (checked every 50th row, so it stays cheap)."""
        last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
        if last % 50 == 0:
            self._db.execute(f"DELETE FROM {table} WHERE device_id=? AND rowid NOT IN (SELECT rowid FROM {table} "
                             f"WHERE device_id=? ORDER BY {order} DESC LIMIT ?)", (device_id, device_id, keep))

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
                self._db.execute("INSERT INTO latency_samples VALUES (?,?,?,?)", (device_id, now, p50, p99))
                self._prune("latency_samples", "at", device_id, LATENCY_KEEP)

    def set_group(self, device_id: str, group: str | None) -> None:
        self._update_device(device_id, "grp=?", (group,))

    def device(self, device_id: str) -> DeviceRecord | None:
        rows = self._query("SELECT * FROM devices WHERE id=?", (device_id,))
        return self._device(rows[0]) if rows else None

    def devices(self, group: str | None = None) -> list[DeviceRecord]:
        if group is None:
            rows = self._query("SELECT * FROM devices ORDER BY id")
        else:
            rows = self._query("SELECT * FROM devices WHERE grp=? ORDER BY id", (group,))
        return [self._device(r) for r in rows]

    @staticmethod
    def _device(row: sqlite3.Row) -> DeviceRecord:
        d: dict[str, Any] = dict(row)
        d["group"] = d.pop("grp")
        for key in ("current", "previous", "target"):
            d[key] = _ref(d[key])
        d["latency"] = json.loads(d["latency"]) if d["latency"] else {}
        for key in ("shadow", "drift"):
            d[key] = json.loads(d[key]) if d.get(key) else None
        return DeviceRecord(**d)

    # -- rollouts ---------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRecord) -> None:
        r = rollout
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                busy = self._busy([t.device_id for t in r.targets])
                if busy:
                    dev, other = next(iter(busy.items()))
                    raise RolloutConflict(f"device {dev} is already in running rollout {other}; wait for it first")
                self._db.execute(
                    "INSERT INTO rollouts (id, name, version, status, stages, stage, stage_started_at, max_failures, "
                    "stage_timeout, reason, created_at, updated_at, source_url, stage_soak, created_by, shadow) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (r.id, r.name, r.version, r.status, json.dumps(list(r.stages)), r.stage, r.stage_started_at,
                     r.max_failures, r.stage_timeout, r.reason, r.created_at, r.updated_at, r.source_url,
                     r.stage_soak, r.created_by, _json(r.shadow)))
                self._db.executemany(
                    "INSERT INTO rollout_devices (rollout_id, device_id, stage, bundle_sha, previous_sha, status, "
                    "reason, sent_at, done_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(r.id, t.device_id, t.stage, t.bundle_sha, t.previous_sha, t.status, t.reason, t.sent_at,
                      t.done_at) for t in r.devices])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def busy_devices(self, device_ids: Iterable[str]) -> dict[str, str]:
        with self._lock:
            return self._busy(list(device_ids))

    def _busy(self, device_ids: list[str]) -> dict[str, str]:
        if not device_ids:
            return {}
        rows = self._db.execute(
            "SELECT rd.device_id, rd.rollout_id FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
            f"WHERE r.status IN ({_marks(ACTIVE_ROLLOUT)}) AND rd.stage >= 0 AND rd.device_id IN ({_marks(device_ids)})",
            (*ACTIVE_ROLLOUT, *device_ids)).fetchall()
        return {row["device_id"]: row["rollout_id"] for row in rows}

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
        self._execute("UPDATE rollouts SET request=?, request_by=? WHERE id=?", (request, by, rollout_id))

    def clear_request(self, rollout_id: str, request: str) -> None:
        self._execute("UPDATE rollouts SET request=NULL, request_by=NULL WHERE id=? AND request=?",
                      (rollout_id, request))

    def _rollouts(self, where: str, params: tuple, order: bool = True) -> list[RolloutRecord]:
        """Rollouts matching `where` (oldest first unless `where` orders them) with their targets,
        in one read transaction (a consistent view)."""
        sql = f"SELECT * FROM rollouts {where}" + (" ORDER BY created_at" if order else "")
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(sql, params).fetchall()
                ids = [r["id"] for r in rows]
                targets: dict[str, list[RolloutTarget]] = {i: [] for i in ids}
                if ids:
                    for t in self._db.execute(f"SELECT * FROM rollout_devices WHERE rollout_id IN ({_marks(ids)}) "
                                              "ORDER BY stage, device_id", ids):
                        targets[t["rollout_id"]].append(RolloutTarget(**{
                            **dict(t), "status": TargetStatus(t["status"]),
                            "shadow": json.loads(t["shadow"]) if t["shadow"] else None}))
            finally:
                self._db.execute("COMMIT")
        return [RolloutRecord(**{**dict(r), "status": RolloutStatus(r["status"]),
                                 "stages": tuple(json.loads(r["stages"])), "devices": tuple(targets[r["id"]]),
                                 "shadow": json.loads(r["shadow"]) if r["shadow"] else None})
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


def _statements(script: str) -> list[str]:
    """Split a migration file into complete statements (sqlite3.complete_statement knows about
    semicolons inside strings and triggers)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        if not buf and line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:60]!r}")
    return out
