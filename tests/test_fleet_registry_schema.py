"""The registry's schema: numbered migrations applied at start-up, old files adopted, newer ones
refused, and the rules the engine enforces itself (typed records, one active rollout per device).
Real SQLite files throughout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState, Telemetry
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import RegistryUnusable, RolloutConflict
from edge_fleet.registry import open_registry
from edge_fleet.registry.migrations import load_migrations
from edge_fleet.registry.records import RolloutRecord, RolloutStatus, RolloutTarget, TargetStatus
from edge_fleet.registry.sqlite import _statements

LATEST = len(load_migrations("sqlite"))
SHA = "a" * 64


def _columns(db: Path, table: str) -> set[str]:
    with sqlite3.connect(db) as c:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}


def test_migrations_are_numbered_without_gaps_and_split_into_statements():
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, LATEST + 1)) and LATEST >= 3
    assert len(_statements(migrations[0].sql)) == 4  # four CREATE TABLE
    assert _statements("-- c\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\nSELECT 1;") == [
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');", "SELECT 1;"]


def test_a_new_file_gets_every_migration_once_even_when_two_processes_open_it(tmp_path):
    # Opening a new file races on switching it to WAL (SQLite does not wait on a busy file for
    # that pragma): about one round in twenty failed before, so run enough rounds to see it.
    for round_ in range(60):
        db = tmp_path / f"fleet-{round_}.db"
        errors: list[BaseException] = []

        def open_it() -> None:
            try:
                open_registry(db).close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"round {round_}"
        with sqlite3.connect(db) as c:
            assert [r[0] for r in c.execute("SELECT version FROM schema_version ORDER BY version")] == list(range(1, LATEST + 1))
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"source_url", "stage_soak"} <= _columns(db, "rollouts")
    with open_registry(db) as reg:
        assert reg.schema_version() == LATEST


def _legacy_file(db: Path, with_columns: tuple[str, ...]) -> None:
    """A registry file as edge-fleet wrote it before versioned migrations, with one rollout in it."""
    with sqlite3.connect(db) as c:
        for statement in _statements(load_migrations("sqlite")[0].sql):
            c.execute(statement)
        for col in with_columns:
            c.execute(f"ALTER TABLE rollouts ADD COLUMN {col} " + ("TEXT" if col == "source_url" else "REAL NOT NULL DEFAULT 0"))
        c.execute("INSERT INTO rollouts (id, name, version, status, stages, stage, max_failures, stage_timeout, "
                  "created_at, updated_at) VALUES ('r-old', 'digits', 2, 'succeeded', '[1]', 0, 0, 900, 1, 2)")
        c.execute("INSERT INTO rollout_devices (rollout_id, device_id, stage, bundle_sha, status) "
                  "VALUES ('r-old', 'pi-1', 0, ?, 'succeeded')", (SHA,))


@pytest.mark.parametrize("columns", [(), ("source_url",), ("source_url", "stage_soak")])
def test_a_file_from_before_migrations_is_adopted_and_upgraded_with_its_data(tmp_path, columns):
    db = tmp_path / "fleet.db"
    _legacy_file(db, columns)
    with open_registry(db) as reg:
        assert reg.schema_version() == LATEST
        r = reg.rollout("r-old")
        assert r is not None and r.status == RolloutStatus.SUCCEEDED and r.stage_soak == 0 and r.source_url is None
        assert r.target("pi-1").status == TargetStatus.SUCCEEDED and r.stages == (1,)


def test_a_file_newer_than_this_code_is_refused_with_one_line_and_its_code(tmp_path, capsys):
    db = tmp_path / "fleet.db"
    open_registry(db).close()
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO schema_version VALUES (?, ?)", (LATEST + 1, time.time()))
    with pytest.raises(RegistryUnusable, match=f"schema version {LATEST + 1}, this edge-fleet knows up to {LATEST}"):
        open_registry(db)
    assert fleet_main(["status", "--db", str(db)]) == RegistryUnusable.exit_code == 62
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "upgrade edgekit" in err


def test_an_engine_this_code_does_not_have_is_refused(tmp_path, capsys):
    with pytest.raises(RegistryUnusable, match="mysql:// is not supported"):
        open_registry("mysql://fleet@db.example/fleet")
    assert fleet_main(["bundles", "--db", "mysql://fleet@db.example/fleet", "--home", str(tmp_path)]) == 62
    assert "not supported" in capsys.readouterr().err


def test_devices_come_back_as_typed_records(tmp_path):
    with open_registry(tmp_path / "fleet.db") as reg:
        reg.record_reported(ReportedState("cam-1", "succeeded", "pi", "0.1", current=BundleRef("digits", 2, SHA),
                                          deployment_id="r-1"), now=10.0)
        reg.record_telemetry("cam-1", Telemetry(model=None, inferences=5, errors=0, latency={"p50": 1.5}), now=11.0)
        reg.record_presence("cam-1", "offline", now=12.0)
        reg.set_group("cam-1", "lobby")
        d = reg.device("cam-1")
        assert d.current == BundleRef("digits", 2, SHA) and d.current_sha == SHA and d.previous is None
        assert (d.group, d.phase, d.presence, d.inferences, d.latency) == ("lobby", "succeeded", "offline", 5, {"p50": 1.5})
        assert d.last_seen == 11.0 and d.presence_at == 12.0  # offline does not count as seen
        assert [x.id for x in reg.devices("lobby")] == ["cam-1"] and reg.devices("other") == []
        assert reg.device("ghost") is None


def _rollout(rid: str, device: str) -> RolloutRecord:
    return RolloutRecord(rid, "digits", 2, RolloutStatus.PENDING, (1,), -1, None, 0, 900, None, 1.0, 1.0, None, 0.0,
                         (RolloutTarget(rid, device, 0, SHA, None, TargetStatus.WAITING),))


def test_the_registry_itself_refuses_a_second_active_rollout_for_a_device(tmp_path):
    """Two deploys that both passed plan_rollout's check: the second insert is refused inside its transaction."""
    with open_registry(tmp_path / "fleet.db") as reg:
        reg.create_rollout(_rollout("r-1", "pi-1"))
        assert reg.busy_devices(["pi-1", "pi-2"]) == {"pi-1": "r-1"}
        with pytest.raises(RolloutConflict, match="pi-1 is already in running rollout r-1"):
            reg.create_rollout(_rollout("r-2", "pi-1"))
        assert reg.rollout("r-2") is None  # nothing half-written
        reg.update_rollout("r-1", 2.0, status=RolloutStatus.SUCCEEDED, reason="done")
        reg.create_rollout(_rollout("r-3", "pi-1"))  # free again once r-1 ended
        assert [r.id for r in reg.rollouts([RolloutStatus.PENDING])] == ["r-3"]
        assert reg.rollout("r-1").to_json()["devices"][0]["status"] == "waiting"
