"""The fleet registry: bundles, devices and rollouts in one SQLite file (stdlib sqlite3).

The server process and the `edge-fleet` CLI open the same file; WAL mode and a busy timeout
let them work side by side. Published bundle files are copied into a store folder beside
the database, named by their SHA-256, so the block server can serve them by hash.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from edge_agent.ota.protocol import BundleRef, ReportedState, Telemetry

log = logging.getLogger(__name__)

DEFAULT_HOME = Path(os.environ.get("EDGE_FLEET_HOME", Path.home() / ".edgekit" / "fleet"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    profile TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    path TEXT NOT NULL,
    published_at REAL NOT NULL,
    UNIQUE (name, version, profile)
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    profile TEXT,
    grp TEXT,
    current TEXT,
    previous TEXT,
    target TEXT,
    phase TEXT,
    deployment_id TEXT,
    progress REAL,
    last_error TEXT,
    agent_version TEXT,
    reported_at REAL,
    last_seen REAL,
    presence TEXT,
    presence_at REAL,
    latency TEXT,
    inferences INTEGER,
    errors INTEGER,
    telemetry_at REAL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    stages TEXT NOT NULL,
    stage INTEGER NOT NULL DEFAULT -1,
    stage_started_at REAL,
    max_failures REAL NOT NULL,
    stage_timeout REAL NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    device_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    bundle_sha TEXT,
    previous_sha TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    sent_at REAL,
    done_at REAL,
    PRIMARY KEY (rollout_id, device_id)
);
"""


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


def _ref_json(ref: BundleRef | None) -> str | None:
    return json.dumps({"name": ref.name, "version": ref.version, "sha256": ref.sha256}) if ref else None


def _ref_obj(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


class Registry:
    """Thread-safe access to the fleet database (one connection guarded by a lock)."""

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
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added after a registry file may have been created."""
        cols = {r["name"] for r in self._db.execute("PRAGMA table_info(rollouts)")}
        if "source_url" not in cols:
            self._db.execute("ALTER TABLE rollouts ADD COLUMN source_url TEXT")
        if "stage_soak" not in cols:
            self._db.execute("ALTER TABLE rollouts ADD COLUMN stage_soak REAL NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level --------------------------------------------------------------------------

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self) -> "_Tx":
        return _Tx(self)

    # -- bundles ----------------------------------------------------------------------------

    def add_bundle(self, rec: BundleRecord) -> None:
        self.execute(
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
        rows = self.query("SELECT * FROM bundles WHERE sha256=?", (sha256,))
        return self._bundle(rows[0]) if rows else None

    def bundles_named(self, name: str, version: int) -> list[BundleRecord]:
        return [self._bundle(r) for r in self.query(
            "SELECT * FROM bundles WHERE name=? AND version=? ORDER BY profile", (name, version))]

    def bundles(self) -> list[BundleRecord]:
        return [self._bundle(r) for r in self.query("SELECT * FROM bundles ORDER BY name, version, profile")]

    # -- devices ----------------------------------------------------------------------------

    def _ensure_device(self, device_id: str) -> None:
        self.execute("INSERT OR IGNORE INTO devices (id) VALUES (?)", (device_id,))

    def record_reported(self, state: ReportedState, now: float | None = None) -> None:
        """Store a device's reported state (creates the device on first contact)."""
        now = time.time() if now is None else now
        with self._lock:
            self._ensure_device(state.device_id)
            self.execute(
                "UPDATE devices SET profile=?, current=?, previous=?, target=?, phase=?, deployment_id=?, "
                "progress=?, last_error=?, agent_version=?, reported_at=?, last_seen=? WHERE id=?",
                (state.profile, _ref_json(state.current), _ref_json(state.previous), _ref_json(state.target),
                 state.phase, state.deployment_id, state.progress, state.last_error, state.agent_version,
                 now, now, state.device_id),
            )

    def record_presence(self, device_id: str, state: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._ensure_device(device_id)
            seen = ", last_seen=?" if state == "online" else ""
            params = (state, now, now, device_id) if seen else (state, now, device_id)
            self.execute(f"UPDATE devices SET presence=?, presence_at=?{seen} WHERE id=?", params)

    def record_telemetry(self, device_id: str, tel: Telemetry, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._ensure_device(device_id)
            self.execute(
                "UPDATE devices SET latency=?, inferences=?, errors=?, telemetry_at=?, last_seen=? WHERE id=?",
                (json.dumps(tel.latency), tel.inferences, tel.errors, now, now, device_id),
            )

    def set_group(self, device_id: str, group: str | None) -> None:
        with self._lock:
            self._ensure_device(device_id)
            self.execute("UPDATE devices SET grp=? WHERE id=?", (group, device_id))

    def device(self, device_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM devices WHERE id=?", (device_id,))
        return self._device(rows[0]) if rows else None

    def devices(self, group: str | None = None) -> list[dict[str, Any]]:
        if group is None:
            rows = self.query("SELECT * FROM devices ORDER BY id")
        else:
            rows = self.query("SELECT * FROM devices WHERE grp=? ORDER BY id", (group,))
        return [self._device(r) for r in rows]

    @staticmethod
    def _device(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["group"] = d.pop("grp")
        for key in ("current", "previous", "target"):
            d[key] = _ref_obj(d[key])
        d["latency"] = json.loads(d["latency"]) if d["latency"] else {}
        return d

    # -- rollouts ---------------------------------------------------------------------------

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM rollouts WHERE id=?", (rollout_id,))
        if not rows:
            return None
        r = dict(rows[0])
        r["stages"] = json.loads(r["stages"])
        r["devices"] = [dict(x) for x in self.query(
            "SELECT * FROM rollout_devices WHERE rollout_id=? ORDER BY stage, device_id", (rollout_id,))]
        return r

    def rollouts(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self.query(f"SELECT id FROM rollouts WHERE status IN ({marks}) ORDER BY created_at", statuses)
        else:
            rows = self.query("SELECT id FROM rollouts ORDER BY created_at")
        return [r for r in (self.rollout(row["id"]) for row in rows) if r is not None]


class _Tx:
    """`with registry.transaction():` - BEGIN IMMEDIATE ... COMMIT/ROLLBACK under the lock."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def __enter__(self) -> Registry:
        self.reg._lock.acquire()
        self.reg._db.execute("BEGIN IMMEDIATE")
        return self.reg

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.reg._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.reg._lock.release()


def iter_latency(latency: dict[str, Any], *names: str) -> Iterator[float | None]:
    """p50/p99 style values from a telemetry latency dict, accepting `p50` or `p50_ms` keys."""
    for n in names:
        v = latency.get(n, latency.get(f"{n}_ms"))
        yield float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
