"""The SQLite registry engine (stdlib sqlite3): the embedded default, one file per fleet.

The server process and the `edge-fleet` CLI open the same file; WAL mode and a busy timeout
let them work side by side. The queries are shared with PostgreSQL (sql.py); this module opens
the file, applies migrations/sqlite/*.sql and adopts files made before versioned migrations.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import RegistryUnusable
from .migrations import Migration, load_migrations, pending
from .sql import SqlRegistry

log = logging.getLogger(__name__)

# Columns a registry file made before versioned migrations may have, and the migration that adds each.
_LEGACY_COLUMNS = (("source_url", 2), ("stage_soak", 3))


class SqliteRegistry(SqlRegistry):
    """Thread-safe access to one SQLite registry file (one connection guarded by a lock)."""

    UNAVAILABLE = (*SqlRegistry.UNAVAILABLE, sqlite3.OperationalError)  # locked past the busy timeout, I/O error

    def __init__(self, db_path: Path, store_dir: Path | None = None) -> None:
        self.db_path = Path(db_path).expanduser()
        self.store_dir = Path(store_dir) if store_dir else self.db_path.parent / "bundles"
        self._lock = threading.RLock()
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _unusable(self.db_path, exc) from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=30000")
            self._use_wal(deadline=time.monotonic() + 30)
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable on commit except at power loss; no fsync per report
            self._migrate(load_migrations("sqlite"))
        except sqlite3.Error as exc:
            self._db.close()
            raise _unusable(self.db_path, exc) from None

    def _use_wal(self, deadline: float) -> None:
        """Switch the file to WAL. SQLite does not call the busy handler for this pragma: while
        another process creates the same new file it fails at once with "database is locked"
        (seen in CI when the server and the CLI start together), so wait here instead."""
        pause = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    @property
    def location(self) -> str:
        return str(self.db_path)

    def change_stamp(self) -> tuple[float, ...]:
        """PRAGMA data_version moves when another connection (the CLI) commits; total_changes when
        this one (the server's MQTT and rollout threads) writes. Together: "the fleet changed"."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            return (float(version), float(self._db.total_changes))

    # -- schema -----------------------------------------------------------------------------

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


def _unusable(path: Path, exc: Exception) -> RegistryUnusable:
    """--db (or HOME/fleet.db) that is not a SQLite file, a folder, or out of reach: the bare sqlite3 message
    ("file is not a database") named no file and exited 1, the code for a bug."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return RegistryUnusable(f"registry {path} cannot be used: {reason} (give --db a fleet registry file, "
                            "or a path where one can be created)")


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
