"""Versioned schema migrations: plain numbered SQL files, one folder per engine.

Why plain files and not a tool (Alembic, yoyo): the schema is four tables, the statements are
short and engine-specific anyway (SQLite and PostgreSQL differ in types and ALTER TABLE), and
a reviewer reads exactly what runs. `NNNN_what.sql` in `<engine>/` is applied once, in order,
at start-up; the engine records each applied number in its `schema_version` table. Files are
never edited after release: a change is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from ...errors import RegistryUnusable

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(engine: str) -> list[Migration]:
    """The migrations shipped for `engine` ("sqlite"), numbered 1, 2, 3, ... without gaps."""
    folder = resources.files(__package__).joinpath(engine)
    found = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda x: x.version)
    if [x.version for x in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{engine} migrations must be numbered 1..N without gaps: {[x.version for x in found]}")
    return found


def pending(current: int, migrations: list[Migration], where: str) -> list[Migration]:
    """The migrations still to apply to a registry at version `current`.

    A registry newer than this code is refused (RegistryUnusable): running old code on it could
    write rows the newer schema does not expect.
    """
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise RegistryUnusable(f"registry {where} has schema version {current}, this edge-fleet knows up to "
                               f"{latest}: upgrade edgekit")
    return [m for m in migrations if m.version > current]
