"""The PostgreSQL registry engine (psycopg 3): one database shared by several fleet servers.

`--db postgresql://user:pass@host:port/dbname`. The queries are the SQLite engine's (sql.py);
this module translates their `?` placeholders to psycopg's `%s`, gives rows the sqlite3.Row
shape (`row["col"]`, `row[0]`, `dict(row)`), overrides the few dialect hooks (JSON access,
pruning, the write lock, the change stamp) and applies migrations/postgresql/*.sql under an
advisory lock, so servers starting together do not both migrate. A lost connection is opened
again on the next call: while the database is away, calls fail (the rollout loop logs and waits)
and the work continues when it is back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psycopg

from ..errors import FleetError, RegistryUnreachable
from .migrations import load_migrations, pending
from .sql import SqlRegistry

log = logging.getLogger(__name__)

_MIGRATE_LOCK = 0x65646765  # advisory lock key for migrations ("edge")


class _Row:
    """A result row shaped like sqlite3.Row: by name, by index, dict() and tuple() of it."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values, self._index = values, index

    def __getitem__(self, key: str | int) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _Row]:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """`?` -> `%s` (our statements have no `?` or `%` inside string literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class _Connection:
    """One psycopg connection in autocommit mode (our code says BEGIN/COMMIT), opened again when lost."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,  # type: ignore[arg-type]
                                   connect_timeout=5, application_name="edge-fleet")
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RegistryUnreachable(f"registry {redact(self.url)} is unreachable: {first} "
                                      "(is PostgreSQL running and the URL right?)") from exc

    def _live(self) -> psycopg.Connection:
        if self._conn.closed or self._conn.broken:
            log.warning("registry %s: connection lost, connecting again", redact(self.url))
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        if params:
            if any(isinstance(p, str) and "\x00" in p for p in params):  # psycopg's DataError was an API 500
                raise FleetError("a value holds a NUL character, which a PostgreSQL registry can neither hold "
                                 "nor match")
            with self._lost_as_unreachable():
                return self._live().execute(_placeholders(sql), tuple(params))
        with self._lost_as_unreachable():
            return self._live().execute(sql)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._lost_as_unreachable(), self._live().cursor() as cur:
            cur.executemany(_placeholders(sql), rows)

    def script(self, sql: str) -> None:
        """Several statements without parameters (a migration file)."""
        with self._lost_as_unreachable():
            self._live().execute(sql)  # type: ignore[arg-type]

    @contextmanager
    def _lost_as_unreachable(self) -> Iterator[None]:
        """A connection that died under a statement (PostgreSQL restarted, failed over, or stopped) raised psycopg's
        own error: an API 500 in plain text and exit 1. Now RegistryUnreachable (API 503, exit 67); the next
        statement connects again. Errors on a live connection (a deadlock, a constraint) pass unchanged."""
        try:
            yield
        except psycopg.OperationalError as exc:
            if not (self._conn.closed or self._conn.broken):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryUnreachable(f"registry {redact(self.url)} lost its connection ({first}): try again "
                                      "(the next request connects again)") from exc

    @property
    def broken(self) -> bool:
        return self._conn.broken

    def close(self) -> None:
        self._conn.close()


class PostgresRegistry(SqlRegistry):
    """Thread-safe access to one PostgreSQL registry (one connection guarded by a lock)."""

    _ROWID = "id"
    _BEGIN_WRITE = "BEGIN"
    _BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ"
    _FOR_UPDATE = " FOR UPDATE"
    _JSON_TEXT = "({col}::jsonb ->> '{key}')"
    _JSON_NUM = "({col}::jsonb ->> '{key}')::float8"
    _CONTAINS = "strpos(id, ?) > 0"
    _INTEGRITY_ERROR = psycopg.errors.UniqueViolation
    UNAVAILABLE = (*SqlRegistry.UNAVAILABLE, psycopg.OperationalError, psycopg.InterfaceError)  # server gone, link cut

    def __init__(self, url: str, store_dir: Path | None = None) -> None:
        self.url = url
        self.store_dir = Path(store_dir) if store_dir else Path.home() / ".edgekit" / "fleet" / "bundles"
        self._lock = threading.RLock()
        self._db = _Connection(url)
        self._migrate()

    @property
    def location(self) -> str:
        return redact(self.url)

    def change_stamp(self) -> tuple[float, ...]:
        """The write-ahead log position moves with every commit of any server or CLI."""
        return (float(self._query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0]),)

    # -- dialect hooks ----------------------------------------------------------------------

    def _insert_id(self, sql: str, params: tuple) -> int:
        return int(self._query(sql + " RETURNING id", params)[0][0])

    def _serialize(self, key: str) -> None:
        self._execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key,))

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        migrations = load_migrations("postgresql")
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version "
                                 "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                current = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                for m in pending(current, migrations, self.location):
                    self._db.script(m.sql)
                    self._db.execute("INSERT INTO schema_version VALUES (?, ?)", (m.version, time.time()))
                    log.log(logging.INFO if current else logging.DEBUG, "registry %s: applied migration %04d_%s",
                            self.location, m.version, m.name)
                self._db.execute("COMMIT")
            except BaseException:
                if not self._db.broken:
                    self._db.execute("ROLLBACK")
                raise
