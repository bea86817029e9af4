"""Many devices: an inventory file, parallel runs, one summary table.

Inventory (TOML): `[defaults]` (user, port, identity, known_hosts, remote_dir, profile) and one
`[[device]]` table per device (name, host, and any default overridden, groups = [...]).
Each device runs in its own task with its own connection: a failure is one row of the table,
never a stop for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

from device_profiles import tomllib
from edge_agent.errors import EdgekitError, code_of, exit_code, one_line

from .ssh import Target

log = logging.getLogger(__name__)

_KEYS = {"name", "host", "user", "port", "identity", "known_hosts", "profile", "groups", "remote_dir"}


class InventoryError(EdgekitError):
    code_name = "usage"


@dataclass(frozen=True)
class Entry:
    target: Target
    remote_dir: str | None = None


def _check_types(where: str, merged: dict[str, Any]) -> None:
    """Each field's type, so a `port = "22a"` or `groups = "lab"` is one line naming the device, not a Python
    message (or, for groups, a string split into one-letter groups)."""
    for key in ("name", "host", "user", "identity", "known_hosts", "profile", "remote_dir"):
        if key in merged and not (isinstance(merged[key], str) and merged[key]):
            raise InventoryError(f"{where}: {key} must be a non-empty string, not {merged[key]!r}")
    port = merged.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InventoryError(f"{where}: port must be a number 1-65535, not {port!r}")
    groups = merged.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise InventoryError(f'{where}: groups must be a list of names, e.g. groups = ["lab"], not {groups!r}')


def _tables(path: Path, data: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """`[defaults]` and the `[[device]]` list, refusing a misspelt section (`[[devices]]` read as no devices)."""
    unknown = set(data) - {"defaults", "device"}
    if unknown:
        raise InventoryError(f"inventory {path}: unknown sections {sorted(unknown)} (expected [defaults] and "
                             f"[[device]] tables)")
    defaults, devices = data.get("defaults", {}), data.get("device", [])
    if not isinstance(defaults, dict) or not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise InventoryError(f"inventory {path}: [defaults] must be a table and each device a [[device]] table")
    return defaults, devices


def refuse_duplicates(source: str, entries: list[Entry]) -> None:
    """Two rows for one device would run two flashes on it at once (and two rows of one name cannot be told apart)."""
    seen_names: set[str] = set()
    seen_places: dict[tuple[str, int, str | None], str] = {}
    for e in entries:
        t = e.target
        if t.name in seen_names:
            raise InventoryError(f"{source}: device {t.name!r} appears twice")
        seen_names.add(t.name)
        place = (t.host.lower(), t.port, e.remote_dir)
        if place in seen_places:
            raise InventoryError(f"{source}: devices {seen_places[place]!r} and {t.name!r} are the same "
                                 f"device ({t.where}): it would be worked on twice at once")
        seen_places[place] = t.name


def load_inventory(path: Path, group: str | None = None) -> list[Entry]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InventoryError(f"inventory {path}: {one_line(exc)}") from exc
    defaults, devices = _tables(path, data)
    if bad := set(defaults) - _KEYS:  # was blamed on "device #1", the first to inherit it
        raise InventoryError(f"inventory {path}: [defaults]: unknown keys {sorted(bad)} (keys: {', '.join(sorted(_KEYS))})")
    base = Path(path).resolve().parent
    out: list[Entry] = []
    for i, dev in enumerate(devices):
        merged = {**defaults, **dev}
        unknown = set(merged) - _KEYS
        if unknown or "host" not in merged:
            what = f"unknown keys {sorted(unknown)}" if unknown else "no host"
            raise InventoryError(f"inventory {path}: device #{i + 1}: {what} (keys: {', '.join(sorted(_KEYS))})")
        _check_types(f"inventory {path}: device #{i + 1}", merged)
        groups = tuple(merged.get("groups", ()))
        paths = {k: (base / Path(merged[k]).expanduser()) for k in ("identity", "known_hosts") if merged.get(k)}
        t = Target(host=merged["host"], user=merged.get("user"), port=int(merged.get("port", 22)),
                   name=merged.get("name") or merged["host"], profile=merged.get("profile"), groups=groups, **paths)
        out.append(Entry(t, merged.get("remote_dir")))
    refuse_duplicates(f"inventory {path}", out)
    known = sorted({g for e in out for g in e.target.groups})
    out = [e for e in out if not group or group in e.target.groups]
    if not out:  # a mistyped group: the ones the file has
        raise InventoryError(f"inventory {path}: no devices" + (f" in group {group!r} (groups: "
                                                                 f"{', '.join(known) or 'none'})" if group else ""))
    return out


@dataclass
class Row:
    device: str
    ok: bool
    exit_code: int
    seconds: float
    result: dict[str, Any]
    error: str = ""


async def run_all(entries: list[Entry], op: Callable[[Entry], Awaitable[dict[str, Any]]], parallel: int) -> list[Row]:
    """Run `op` on every entry, at most `parallel` at a time; each failure becomes its row."""
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(e: Entry) -> Row:
        async with gate:
            t0 = time.monotonic()
            try:
                res = await op(e)
                return Row(e.target.name, True, 0, time.monotonic() - t0, res)
            except Exception as exc:  # noqa: BLE001 - one device's failure is its row, not the run's end
                log.debug("%s failed", e.target.name, exc_info=exc)
                return Row(e.target.name, False, code_of(exc), time.monotonic() - t0, {}, one_line(exc))

    return list(await asyncio.gather(*(one(e) for e in entries)))


def overall_code(rows: list[Row]) -> int:
    """0 when all succeeded; the shared code when every failure has the same; else devices-failed."""
    codes = {r.exit_code for r in rows if not r.ok}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else exit_code("devices-failed")


def summary_table(rows: list[Row], columns: list[tuple[str, Callable[[Row], str]]]) -> str:
    heads = ["device", "result", *[c for c, _ in columns], "time"]
    body = [[r.device, "ok" if r.ok else f"FAIL {r.exit_code}", *[(fn(r) if r.ok else "") for _, fn in columns],
             f"{r.seconds:.1f}s"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [heads, *body]]
    # the device's name once: most messages already start with it ("cam-1: cam-1: ..." before)
    lines += [r.error if r.error.startswith(f"{r.device}: ") else f"{r.device}: {r.error}" for r in rows if not r.ok]
    n_ok = sum(r.ok for r in rows)
    lines.append(f"{n_ok}/{len(rows)} devices ok")
    return "\n".join(lines)


def with_defaults(t: Target, **kw: Any) -> Target:
    """Fill a target's unset connection options from the command line."""
    return replace(t, **{k: v for k, v in kw.items() if v is not None and not getattr(t, k)})
