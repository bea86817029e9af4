"""The fleet registry: bundles, devices and rollouts behind one interface, one module per engine.

    base.py        the Registry interface (abstract class): every query the fleet makes
    records.py     typed records and status enums handed to callers (no rows, no SQL outside)
    sql.py         every query, written once with `?` placeholders (+ sql_views.py, sql_access.py)
    sqlite.py      the SQLite engine (embedded default, one file)
    postgres.py    the PostgreSQL engine (psycopg 3): several fleet servers on one database
    migrations/    numbered SQL files per engine, applied at start-up (`schema_version` table)

`open_registry(location)` picks the engine from the location: a file path is SQLite,
`postgresql://...` PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import RegistryUnusable
from .base import Registry
from .records import (ACTIVE_ROLLOUT, BundleRecord, DeviceRecord, RolloutRecord, RolloutStatus, RolloutTarget,
                      TargetStatus)
from .sqlite import SqliteRegistry

# URL scheme -> engine; a plain path (no scheme) is SQLite.
def _postgres(location: str, store: Path | None) -> Registry:
    from .postgres import PostgresRegistry  # psycopg is needed only by fleets on PostgreSQL

    return PostgresRegistry(location, store)


ENGINES: dict[str, Callable[[str, Path | None], Registry]] = {
    "sqlite": lambda location, store: SqliteRegistry(Path(location.removeprefix("sqlite://")), store),
    "postgresql": _postgres,
    "postgres": _postgres,
}


def open_registry(location: str | Path, store_dir: Path | None = None) -> Registry:
    """Open (and migrate) the registry at `location`: a SQLite file path, `sqlite:///path` or
    `postgresql://user:pass@host:port/db`.

    Raises RegistryUnusable for a URL whose engine this edge-fleet does not have,
    RegistryUnreachable when the database server cannot be reached.
    """
    text = str(location)
    scheme, sep, _rest = text.partition("://")
    if not sep:
        return ENGINES["sqlite"](text, store_dir)
    if scheme not in ENGINES:
        raise RegistryUnusable(f"registry {scheme}:// is not supported (engines: {', '.join(sorted(ENGINES))}; "
                               "give a file path for SQLite)")
    return ENGINES[scheme](text, store_dir)


__all__ = ["ACTIVE_ROLLOUT", "BundleRecord", "DeviceRecord", "ENGINES", "Registry", "RegistryUnusable",
           "RolloutRecord", "RolloutStatus", "RolloutTarget", "SqliteRegistry", "TargetStatus", "open_registry"]
