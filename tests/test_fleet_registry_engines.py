"""Both registry engines (SQLite file, real PostgreSQL server) behave the same where several fleet
servers meet: migrations at start, two deploys racing for one device, the rollouts lease, duplicate and
reordered device reports; and a PostgreSQL that cannot be reached is one line and its exit code."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import RegistryUnreachable, RolloutConflict
from edge_fleet.registry.migrations import load_migrations
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutRecord, RolloutStatus, RolloutTarget, TargetStatus

from .ports import free_port

V1 = "1" * 64


def _rollout(rid: str, devices: list[str]) -> RolloutRecord:
    return RolloutRecord(id=rid, name="digits", version=2, status=RolloutStatus.PENDING, stages=(100,), stage=-1,
                         stage_started_at=None, max_failures=0, stage_timeout=60, reason=None, created_at=1.0,
                         updated_at=1.0, source_url=None, stage_soak=0, devices=tuple(RolloutTarget(rid, d, 0, V1, None, TargetStatus.WAITING, None,
                                                                     None, None) for d in devices))


def test_migrations_run_once_at_start_and_the_schema_matches(registry_location):
    with open_registry(registry_location) as a, open_registry(registry_location) as b:
        assert a.schema_version() == b.schema_version() == len(load_migrations("sqlite")) == 9


def test_two_operators_deploying_to_one_device_at_once_one_wins(registry_location):
    """Ten threads, each with its own connection (as ten API requests or CLIs), deploy to the same
    device at the same moment: exactly one rollout is stored, the others get RolloutConflict."""
    regs = [open_registry(registry_location) for _ in range(10)]
    won, refused = [], []
    start = threading.Barrier(len(regs))

    def deploy(i: int) -> None:
        start.wait()
        try:
            regs[i].create_rollout(_rollout(f"r-{i}", ["dev-1", f"own-{i}"]))
            won.append(i)
        except RolloutConflict as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(len(regs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(refused) == 9
    assert all(f"is already in running rollout r-{won[0]}" in msg for msg in refused)
    assert [r.id for r in regs[0].rollouts()] == [f"r-{won[0]}"]
    for reg in regs:
        reg.close()


def test_the_rollouts_lease_has_one_holder_until_it_runs_out_or_is_released(registry_location):
    with open_registry(registry_location) as a, open_registry(registry_location) as b:
        assert a.acquire_lease("rollouts", "server-a", ttl=10, now=100)
        assert not b.acquire_lease("rollouts", "server-b", ttl=10, now=105)
        assert a.acquire_lease("rollouts", "server-a", ttl=10, now=108)  # renewed: runs to 118
        assert not b.acquire_lease("rollouts", "server-b", ttl=10, now=117)
        assert b.acquire_lease("rollouts", "server-b", ttl=10, now=119)  # a died: b takes over
        assert not a.acquire_lease("rollouts", "server-a", ttl=10, now=120)
        b.release_lease("rollouts", "server-b")
        assert a.acquire_lease("rollouts", "server-a", ttl=10, now=121)


def test_duplicate_and_reordered_reports_keep_the_newest_state(registry_location):
    """A late `downloading` (sent before `succeeded`, delivered after) must not hide the success; a
    duplicate adds no history row; a report from a device whose clock was reset is still taken."""
    ref = BundleRef("digits", 2, V1)
    with open_registry(registry_location) as reg:
        downloading = ReportedState("a", "downloading", "pi", "t", deployment_id="r-1", progress=0.5, updated_at=1000.0)
        done = ReportedState("a", "succeeded", "pi", "t", current=ref, deployment_id="r-1", updated_at=1010.0)
        reg.record_reported(done, now=2000)
        reg.record_reported(done, now=2001)  # duplicate (QoS 1 redelivery, or two servers)
        reg.record_reported(downloading, now=2002)  # reordered
        dev = reg.device("a")
        assert dev.phase == "succeeded" and dev.current == ref
        assert [e.phase for e in reg.device_events("a", 10, 0).items] == ["succeeded"]
        rebooted = ReportedState("a", "idle", "pi", "t", current=ref, updated_at=5.0)  # no RTC: clock at 1970
        reg.record_reported(rebooted, now=2003)
        assert reg.device("a").phase == "idle"


def test_postgresql_unreachable_at_start_is_one_line_and_its_exit_code(tmp_path, capsys):
    url = f"postgresql://fleet:secret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(RegistryUnreachable, match="is unreachable"):
        open_registry(url)
    assert fleet_main(["serve", "--db", url, "--home", str(tmp_path)]) == 67
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is unreachable" in err and "secret" not in err and "fleet:***@" in err
    assert fleet_main(["status", "--db", url, "--home", str(tmp_path)]) == 67


def test_devices_by_id_reads_many_devices_in_few_queries(registry_location):
    with open_registry(registry_location) as reg:
        for i in range(1200):
            reg.set_group(f"d{i:04d}", "g")
        before = reg.queries
        found = reg.devices_by_id([f"d{i:04d}" for i in range(1200)] + ["unknown"])
        assert reg.queries - before == 3 and len(found) == 1200 and found["d0042"].group == "g"


def test_a_nul_in_a_value_is_refused_in_one_line_never_a_driver_error(registry_location):
    """A NUL in an API path or query (`/api/v1/devices?q=%00`, `/api/v1/rollouts/%00`) reached psycopg, whose
    DataError was a 500 on a PostgreSQL fleet. SQLite answers such a lookup; PostgreSQL refuses it as a FleetError."""
    from edge_fleet.errors import FleetError
    from edge_fleet.registry.records import DeviceFilter

    with open_registry(registry_location) as reg:
        for lookup in (lambda: reg.device("a\x00"), lambda: reg.rollout("r-\x00"),
                       lambda: reg.devices_page(DeviceFilter(search="\x00"), 10, 0),
                       lambda: reg.bundles_named("digits\x00", 2), lambda: reg.audit_page(10, 0, actor="\x00")):
            try:
                lookup()
            except FleetError as exc:
                assert "NUL" in str(exc) and not registry_location.endswith(".db")


def test_a_date_and_time_model_version_is_stored_by_both_engines(registry_location, tmp_path):
    """`edge-convert --model-version 202612021534` (a CI numbering models by date and time) published on SQLite
    and failed on PostgreSQL, whose version columns were 32-bit: both hold a 64-bit version now."""
    from edge_fleet.registry.records import BundleRecord

    version = 202612021534
    (tmp_path / "b.edgebundle").write_bytes(b"x")
    with open_registry(registry_location) as reg:
        reg.add_bundle(BundleRecord(V1, "digits", version, "pi", 1, {}, {}, "k", tmp_path / "b.edgebundle", 0.0))
        assert [b.version for b in reg.bundles_named("digits", version)] == [version]
        reg.create_rollout(replace(_rollout("r-big", ["dev-1"]), version=version))
        assert reg.rollout("r-big").version == version
