"""Defects found by probing the fleet as an operator pushing updates to many devices would: rollouts, the
registry, the block server and the API (the command line's are in test_fleet_probe_cli.py).

Each test names what the operator saw before the fix. The rollout tests drive RolloutDriver on a real
SQLite registry with a publish() that records what would go to the broker (as test_fleet_rollout_states.py);
the API tests run the real app under uvicorn on a free port.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from edge_agent.bundle import generate_keypair
from edge_agent.ota.protocol import BundleRef, ReportedState, Topics
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import VersionConflict
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus, TargetStatus
from edge_fleet.rollout import plan_rollout
from . import fault_helpers
from .test_fleet_rollout_states import V1, V2, _bundle, _recording_driver, _two_devices_on_v1

T, R = TargetStatus, RolloutStatus


def test_a_halt_whose_previous_bundle_file_is_gone_halts_instead_of_failing_every_tick(tmp_path):
    """The previous bundle's file deleted from the store (disk clean-up): the halt raised in _revert on each tick,
    so the rollout stayed RUNNING forever (`deploy --wait` never returned) and the log got a traceback 5 times a
    second. Now the switched device is `rollback_failed` naming the file, and the rollout halts."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(tmp_path / "fleet.db") as reg:
        _two_devices_on_v1(reg, tmp_path)
        (tmp_path / f"{V1}.edgebundle").unlink()
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100])
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        reg.record_reported(ReportedState("a", "succeeded", "pi", "t", current=BundleRef("digits", 2, V2),
                                          previous=BundleRef("digits", 1, V1), deployment_id=plan.id))
        driver.step(now=1001.0)  # a switched: stage 2 starts
        reg.record_reported(ReportedState("b", "failed", "pi", "t", current=BundleRef("digits", 1, V1),
                                          deployment_id=plan.id, last_error="self-test failed"))
        driver.step(now=1002.0)
        r = reg.rollout(plan.id)
        assert r.status == R.HALTED, r
        assert r.target("a").status == T.ROLLBACK_FAILED
        assert "digits:1 file unreadable" in r.target("a").reason and "cannot roll back" in r.target("a").reason
        assert r.target("b").status == T.FAILED and r.target("b").reason.startswith("self-test failed; ")
        assert [topic for topic, _ in sent] == ["edgekit/devices/a/desired", "edgekit/devices/b/desired"]


def test_a_deploy_to_a_thousand_devices_works_where_sqlite_allows_999_parameters(tmp_path):
    """SQLite before 3.32 (Ubuntu 20.04, JetPack 5) allows 999 parameters per statement: the busy-device check put
    every target in one `IN (...)`, so deploying to a group of 1,000 devices failed with `too many SQL variables`
    (exit 1), and listing 1,000 rollouts did too. Both go in slices now."""
    with open_registry(tmp_path / "fleet.db") as reg:
        reg._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # what those SQLite builds allow
        reg.add_bundle(_bundle(tmp_path, V2, 2))
        ids = [f"cam-{i:04d}" for i in range(1200)]
        for dev in ids:
            reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
            reg.set_group(dev, "lobby")
        plan = plan_rollout(reg, "digits:2", group="lobby")
        assert len(plan.targets) == 1200
        r = reg.rollout(plan.id)
        assert [t.device_id for t in r.devices if t.stage == 0] == ids[:60]  # 5 %, in device order
        assert reg.busy_devices(ids) == {dev: plan.id for dev in ids}
    with open_registry(tmp_path / "history.db") as reg:  # a thousand finished rollouts, then `edge-fleet rollouts`
        reg._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        reg.add_bundle(_bundle(tmp_path, V2, 2))
        reg.record_reported(ReportedState("a", "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
        done = []
        for i in range(1000):
            done.append(plan_rollout(reg, "digits:2", devices=["a"], stages=[100]).id)
            reg.update_rollout(done[-1], float(i), status=R.SUCCEEDED)
        listed = reg.rollouts()
        assert len(listed) == 1000 and all(len(x.devices) == 1 for x in listed)


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[str, str, Path]]:
    """The real API app under uvicorn on a free port (no broker: these requests never reach one):
    (URL, an admin token, the signing key folder whose public key the fleet trusts)."""
    from edge_fleet.access import create_token, local_actor
    from edge_fleet.api.deps import ApiState
    from edge_fleet.api.server import HttpServer
    from edge_agent.bundle import TrustStore

    key, pub = generate_keypair(tmp_path / "keys")
    with open_registry(tmp_path / "fleet.db") as reg:
        secret, _ = create_token(reg, local_actor(), "admin", "admin")
        server = HttpServer(ApiState(reg, trust=lambda: TrustStore.from_paths([str(pub)])), port=0).start()
        try:
            yield server.url, secret, tmp_path / "keys"
        finally:
            server.stop()


def test_a_bundle_uploaded_as_a_form_is_refused_as_a_form_not_as_a_corrupt_bundle(api, tmp_path):
    """`curl -F file=@digits.edgebundle` (the usual way to upload a file) was answered `not a readable bundle
    archive: re-download or re-copy it` (422, exit 11): the operator re-downloaded a good bundle. Now 415 saying how
    to send it."""
    url, token, _ = api
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.post("/api/v1/bundles", params={"filename": "digits.edgebundle"},
                        files={"file": ("digits.edgebundle", b"\x00" * 2048, "application/octet-stream")})
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported-media-type" and "--data-binary @FILE" in r.json()["message"]
        assert client.get("/api/v1/bundles").json()["total"] == 0


def test_a_second_file_under_a_published_version_never_replaces_the_first(registry_location, tmp_path):
    """Two publishes of different files as digits:2 racing (two CI jobs): both passed publish's check, and SQLite's
    INSERT OR REPLACE then deleted the first one's row though it had been told `published`. The registry refuses
    the second itself now (exit 9, as the check does), and the same file again still just updates its row."""
    with open_registry(registry_location) as reg:
        first = _bundle(tmp_path, V2, 2)
        reg.add_bundle(first)
        with pytest.raises(VersionConflict, match="digits v2 for pi is already published with another file"):
            reg.add_bundle(_bundle(tmp_path, "3" * 64, 2))
        assert [b.sha256 for b in reg.bundles_named("digits", 2)] == [V2]
        reg.add_bundle(first)
        assert [b.sha256 for b in reg.bundles_named("digits", 2)] == [V2]


def test_a_block_request_for_a_bundle_file_deleted_mid_rollout_is_one_warning(tmp_path, caplog):
    """The store's file removed while devices download it: each block request (50 per second per device) raised
    FileNotFoundError into the worker's `log.exception`, a traceback per request. Now one warning line each."""
    from edge_agent.ota.block_frames import BlockRequest
    from edge_fleet.block_server import BlockServer

    path = tmp_path / f"{V2}.edgebundle"
    sent: list[str] = []
    client = type("Client", (), {"publish": lambda _self, topic, *_a, **_k: sent.append(topic)})()
    server = BlockServer(client, Topics(), lambda _sha: (path, 300_000))  # known when the rollout started
    with caplog.at_level("WARNING", logger="edge_fleet.block_server"):
        assert server.serve("cam-1", BlockRequest(sha256=V2, blocks=[0, 1], block_size=131072)) == 0
    assert sent == [] and server.stats["ignored"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"block request from cam-1: bundle {V2[:12]} file unreadable (No such file or directory)"]


def test_the_api_answers_503_json_when_postgresql_drops_the_connection(pg_cluster):
    """PostgreSQL restarted or failed over under a running `serve --http`: the next request was a plain-text
    `Internal Server Error` (500) with a traceback in the log, and with the database down the following ones were
    400 `bad request`. Now 503 `registry-unreachable` (exit code 67) in JSON, and the request after reconnects."""
    import psycopg

    from edge_fleet.access import create_token, local_actor
    from edge_fleet.api.deps import ApiState
    from edge_fleet.api.server import HttpServer

    url = pg_cluster.create_database()
    with open_registry(url) as reg:
        secret, _ = create_token(reg, local_actor(), "admin", "admin")
        server = HttpServer(ApiState(reg), port=0).start()
        try:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}) as client:
                assert client.get("/api/v1/devices").status_code == 200
                with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:  # what a restart does to it
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                  "AND application_name = 'edge-fleet'", (url.rsplit("/", 1)[1],))
                r = client.get("/api/v1/devices")
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "registry-unreachable" and r.json()["exit_code"] == 67
                assert client.get("/api/v1/devices").status_code == 200
        finally:
            server.stop()


def test_an_unexpected_error_in_a_request_is_a_json_500(api, monkeypatch, capsys):
    """Anything without an error class of its own (SQLite still locked after its 30 s busy timeout, a bug) was
    answered `Internal Server Error` in plain text, which the console cannot show and `--api` reported as a bare
    HTTP status. Now JSON with the exception's line, and the remote CLI prints that line."""
    from edge_fleet.registry.sql import SqlRegistry

    url, token, _ = api

    def locked(*_a: object, **_k: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqlRegistry, "devices_page", locked)  # the fault: the registry call fails
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.get("/api/v1/devices")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
    assert r.json() == {"error": "internal", "message": "internal error (OperationalError: database is locked): "
                        "see the server's log", "exit_code": 1}
    capsys.readouterr()
    assert fleet_main(["--api", url, "--token", token, "devices", "list"]) == 1
    assert "database is locked" in capsys.readouterr().err


def test_a_halt_or_rollback_of_a_pending_rollout_sends_nothing(tmp_path):
    """docs/fleet.md: `halt` pauses a pending rollout (no new stage starts). The driver started the pending rollout
    before applying requests, so its first stage got the update anyway; a roll-back of a rollout deployed by mistake
    sent the new bundle and then the old one. Now: halted, paused before stage 1 (resume starts it); rolled back,
    halted with every device not_started and nothing published."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(tmp_path / "fleet.db") as reg:
        _two_devices_on_v1(reg, tmp_path)
        driver = _recording_driver(reg, sent)
        paused = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100]).id
        reg.request_rollout(paused, "halt", "op")
        driver.step(now=10.0)
        r = reg.rollout(paused)
        assert (r.status, r.stage, sent) == (R.PAUSED, -1, [])
        assert {t.status for t in r.targets} == {T.WAITING}
        reg.request_rollout(paused, "resume", "op")
        driver.step(now=11.0)
        driver.step(now=12.0)
        r = reg.rollout(paused)
        assert (r.status, r.stage) == (R.RUNNING, 0) and [t for t, _ in sent] == ["edgekit/devices/a/desired"]
        reg.update_rollout(paused, 13.0, status=R.SUCCEEDED)  # done with it: a and b are free again
        sent.clear()
        undone = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100]).id
        reg.request_rollout(undone, "rollback", "op")
        driver.step(now=20.0)
        r = reg.rollout(undone)
        assert (r.status, sent) == (R.HALTED, []) and r.reason == "rolled back by op"
        assert {t.status for t in r.targets} == {T.NOT_STARTED}


@fault_helpers.needs_root
def test_publishing_into_a_full_bundle_store_is_the_disk_space_error(tmp_path, capsys):
    """The fleet's disk full (years of bundles in HOME/bundles): `publish` said `[Errno 28] No space left on device`
    with exit 1, and an API upload was a 500. Now the disk-space error (18) naming the store; the API answers 507."""
    from edge_fleet.access import create_token, local_actor
    from edge_fleet.api.deps import ApiState
    from edge_fleet.api.server import HttpServer
    from edge_agent.bundle import TrustStore

    bundle = tmp_path / "big.edgebundle"
    bundle.write_bytes(b"\x01" * 300_000)  # refused for space before anyone reads it as a bundle
    _, pub = generate_keypair(tmp_path / "keys")
    with fault_helpers.small_disk(tmp_path / "disk", size="1m") as disk:
        home = disk / "fleet"
        with open_registry(home / "fleet.db", store_dir=home / "bundles") as reg:
            secret, _ = create_token(reg, local_actor(), "admin", "admin")
            fault_helpers.fill(disk, leave=64 * 1024)
            rc = fleet_main(["publish", str(bundle), "--trust", str(pub), "--home", str(home)])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 18 and err == [f"edge-fleet: error: no space left in the bundle store {home / 'bundles'} "
                                        "for big.edgebundle: free space there (or give the fleet a larger disk) "
                                        "and publish again"], err
            server = HttpServer(ApiState(reg, trust=lambda: TrustStore.from_paths([str(pub)])), port=0).start()
            try:
                r = httpx.post(f"{server.url}/api/v1/bundles", params={"filename": "big.edgebundle"},
                               content=bundle.read_bytes(), headers={"Authorization": f"Bearer {secret}"})
            finally:
                server.stop()
            assert r.status_code == 507 and r.json()["error"] == "disk-space" and r.json()["exit_code"] == 18, r.text
            assert not list((home / "bundles").iterdir())  # nothing half-written left behind


def test_the_live_console_stream_stays_json_when_a_device_reports_nan_figures(api, tmp_path):
    """A device's shadow report is free-form: `"agreement": NaN` (json.loads takes it) reached the overview's stage
    figures, and the event stream sent it as `NaN`, which the console's JSON.parse refuses: live updates stopped
    for every viewer while that rollout was shown. The stream sends null, as the API's answers do."""
    url, token, _ = api
    with open_registry(tmp_path / "fleet.db") as reg:  # the API's registry, written as the server's writer does
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a"], stages=[100])
        driver = _recording_driver(reg, [])
        driver.step(now=1000.0)
        reg.record_reported(ReportedState("a", "failed", "pi", "t", current=BundleRef("digits", 1, V1),
                                          deployment_id=plan.id, last_error="shadow run disagreed",
                                          shadow={"deployment_id": plan.id, "verdict": "failed",
                                                  "agreement": float("nan"), "frames": 10}))
        driver.step(now=1001.0)
    with httpx.stream("GET", f"{url}/api/v1/events", headers={"Authorization": f"Bearer {token}"}) as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    overview = json.loads(data[len("data: "):], parse_constant=lambda word: pytest.fail(f"{word} is not JSON"))
    shadow = overview["overview"]["recent_rollouts"][0]["stage_progress"][0]["shadow"]
    assert shadow["verdicts"] == {"failed": 1} and shadow["agreement_min"] is None


def test_a_remote_publish_of_a_file_whose_name_has_a_space_reaches_the_fleet(api, tmp_path, capsys):
    """`edge-fleet --api URL publish "digits v2.edgebundle"` was refused before the upload was looked at (`filename
    must be 1-128 of [A-Za-z0-9._-]`, exit 2): the API's label rule applied to the operator's own file name. The
    remote CLI sends a safe label now, so the fleet verifies the file (this one is no bundle, and is refused as such)."""
    url, token, _ = api
    upload = tmp_path / "digits v2 (final).edgebundle"
    upload.write_bytes(b"\x00" * 4096)
    rc = fleet_main(["--api", url, "--token", token, "publish", str(upload)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 11 and len(err) == 1, err
    assert err[0].startswith("edge-fleet: error: digits_v2__final_.edgebundle is not an edgekit bundle"), err


def test_a_token_name_already_live_is_a_conflict_not_a_bad_request(api, tmp_path, capsys):
    """Creating an API token under a live token's name answered 400 (exit 2, `usage`), as if the request were
    malformed: a script could not tell "fix your request" from "that name is taken". Now 409 and exit 69
    (`token-exists`), from the API and the CLI alike; a revoked token's name may still be taken again."""
    url, token, _ = api
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{url}/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=headers).status_code == 201
    again = httpx.post(f"{url}/api/v1/tokens", json={"name": "ci", "role": "operator"}, headers=headers)
    assert again.status_code == 409, again.text
    assert (again.json()["error"], again.json()["exit_code"]) == ("token-exists", 69)
    assert fleet_main(["--api", url, "--token", token, "tokens", "create", "ci", "--role", "viewer"]) == 69
    assert fleet_main(["tokens", "create", "ci", "--role", "viewer", "--db", str(tmp_path / "fleet.db")]) == 69
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("a live token named 'ci' already exists" in line for line in err), err
