"""The SQL engines' read-side queries for the API and console: paged, filtered, sorted listings,
counts for the overview, a device's update history and latency samples.

A mixin of SqlRegistry (sql.py owns the connection, the lock and the row -> record mapping);
kept apart so that each module stays one screenful of concerns. Model, version and latency live
in JSON text columns; each engine says how to reach a JSON field (`_JSON_TEXT`, `_JSON_NUM`).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Callable

from edge_agent.ota.protocol import BundleRef

from .records import BundleRecord, DeviceEvent, DeviceFilter, DeviceRecord, LatencySample, Page


@cache
def _listing_sql(json_text: str, json_num: str, contains: str) -> tuple[dict[str, str], dict[str, str]]:
    """(sort key -> SQL expression, filter field -> SQL condition with one parameter) for a dialect."""
    p50 = f"COALESCE({json_num.format(col='latency', key='p50')}, {json_num.format(col='latency', key='p50_ms')})"
    model = json_text.format(col="current", key="name")
    version = json_num.format(col="current", key="version")
    sort = {"id": "id", "profile": "profile", "group": "grp", "model": model, "version": version, "phase": "phase",
            "presence": "presence", "last_seen": "last_seen", "latency": p50}
    where = {"profile": "profile = ?", "group": "grp = ?", "model": f"{model} = ?", "version": f"{version} = ?",
             "phase": "COALESCE(phase, 'unknown') = ?", "presence": "COALESCE(presence, 'unknown') = ?",
             "latency_min": f"{p50} >= ?", "latency_max": f"{p50} <= ?", "search": contains}
    return sort, where


class SqlViews:
    """Listing queries; relies on SqlRegistry's _query, _device and _bundle."""

    #: a JSON field of a text column as text / as a number ({col}, {key} filled in)
    _JSON_TEXT = "json_extract({col}, '$.{key}')"
    _JSON_NUM = "json_extract({col}, '$.{key}')"
    #: "the device id contains the parameter"
    _CONTAINS = "instr(id, ?) > 0"

    _query: Callable[..., list[Any]]
    _device: Callable[[Any], DeviceRecord]
    _bundle: Callable[[Any], BundleRecord]

    def devices_page(self, where: DeviceFilter, limit: int, offset: int, sort: str = "id",
                     descending: bool = False) -> Page[DeviceRecord]:
        _SORT_SQL, _FILTER_SQL = _listing_sql(self._JSON_TEXT, self._JSON_NUM, self._CONTAINS)
        if sort not in _SORT_SQL:
            raise ValueError(f"cannot sort devices by {sort!r} (one of {', '.join(_SORT_SQL)})")
        conds, params = [], []
        for name, sql in _FILTER_SQL.items():
            value = getattr(where, name)
            if value is not None:
                conds.append(sql)
                params.append(value)
        clause = ("WHERE " + " AND ".join(conds)) if conds else ""
        total = self._query(f"SELECT COUNT(*) FROM devices {clause}", params)[0][0]
        direction = "DESC" if descending else "ASC"
        rows = self._query(f"SELECT * FROM devices {clause} ORDER BY {_SORT_SQL[sort]} {direction}, id "
                           "LIMIT ? OFFSET ?", (*params, limit, offset))
        return Page([self._device(r) for r in rows], total, limit, offset)

    def device_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, expr in (("phase", "COALESCE(phase, 'unknown')"), ("presence", "COALESCE(presence, 'unknown')")):
            out[key] = {r[0]: r[1] for r in self._query(f"SELECT {expr}, COUNT(*) FROM devices GROUP BY 1 ORDER BY 1")}
        out["total"] = {"devices": self._query("SELECT COUNT(*) FROM devices")[0][0]}
        return out

    def groups_page(self, limit: int, offset: int) -> Page[tuple[str, int]]:
        total = self._query("SELECT COUNT(DISTINCT grp) FROM devices WHERE grp IS NOT NULL")[0][0]
        rows = self._query("SELECT grp, COUNT(*) FROM devices WHERE grp IS NOT NULL GROUP BY grp ORDER BY grp "
                           "LIMIT ? OFFSET ?", (limit, offset))
        return Page([(r[0], r[1]) for r in rows], total, limit, offset)

    def device_events(self, device_id: str, limit: int, offset: int) -> Page[DeviceEvent]:
        total = self._query("SELECT COUNT(*) FROM device_events WHERE device_id=?", (device_id,))[0][0]
        rows = self._query("SELECT * FROM device_events WHERE device_id=? ORDER BY id DESC LIMIT ? OFFSET ?",
                           (device_id, limit, offset))
        return Page([DeviceEvent(**{**dict(r), "current": _ref(r["current"])}) for r in rows], total, limit, offset)

    def latency_samples(self, device_id: str, limit: int) -> list[LatencySample]:
        rows = self._query("SELECT at, p50, p99 FROM latency_samples WHERE device_id=? ORDER BY at DESC LIMIT ?",
                           (device_id, limit))
        return [LatencySample(r["at"], r["p50"], r["p99"]) for r in reversed(rows)]

    def bundles_page(self, limit: int, offset: int, name: str | None = None) -> Page[BundleRecord]:
        clause, params = ("WHERE name=?", [name]) if name is not None else ("", [])
        total = self._query(f"SELECT COUNT(*) FROM bundles {clause}", params)[0][0]
        rows = self._query(f"SELECT * FROM bundles {clause} ORDER BY name, version DESC, profile LIMIT ? OFFSET ?",
                           (*params, limit, offset))
        return Page([self._bundle(r) for r in rows], total, limit, offset)


def _ref(text: str | None) -> BundleRef | None:
    if not text:
        return None
    o = json.loads(text)
    return BundleRef(name=o["name"], version=o["version"], sha256=o["sha256"])
