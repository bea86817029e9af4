"""Defects found by probing the fleet as an operator pushing updates to many devices would.

Each test names what the operator saw before the fix. The rollout tests drive RolloutDriver on a real
SQLite registry with a publish() that records what would go to the broker (as test_fleet_rollout_states.py);
the CLI tests run `edge-fleet` in-process and read its exit code and its one error line.
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from edge_agent.bundle import generate_keypair
from edge_agent.ota.protocol import BundleRef, ReportedState, Topics
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import VersionConflict, exit_code
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import BundleRecord, RolloutStatus, TargetStatus
from edge_fleet.rollout import RolloutDriver, plan_rollout

T, R = TargetStatus, RolloutStatus
V1, V2 = "1" * 64, "2" * 64


def _bundle(tmp: Path, sha: str, version: int) -> BundleRecord:
    """A registry record with a 10-byte stored file (the driver hashes its blocks for the desired state)."""
    path = tmp / f"{sha}.edgebundle"
    path.write_bytes(bytes(10))
    return BundleRecord(sha, "digits", version, "pi", 10, {}, {"key_id": "k"}, "k", path, 0.0)


def _recording_driver(reg, sent: list) -> RolloutDriver:
    return RolloutDriver(reg, Topics(), lambda topic, payload, _retain: sent.append(
        (topic, json.loads(payload) if payload else None)))


def test_a_halt_whose_previous_bundle_file_is_gone_halts_instead_of_failing_every_tick(tmp_path):
    """The previous bundle's file deleted from the store (disk clean-up): the halt raised in _revert on each tick,
    so the rollout stayed RUNNING forever (`deploy --wait` never returned) and the log got a traceback 5 times a
    second. Now the switched device is `rollback_failed` naming the file, and the rollout halts."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(tmp_path / "fleet.db") as reg:
        for sha, v in ((V1, 1), (V2, 2)):
            reg.add_bundle(_bundle(tmp_path, sha, v))
        for dev in ("a", "b"):
            reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
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


def test_serve_with_tls_files_that_are_not_a_certificate_and_key_is_one_usage_line(tmp_path, capsys):
    """`serve --http 0 --tls-cert X --tls-key Y` with files that are not PEM: uvicorn's thread printed a traceback,
    then `the HTTP server did not start ... (port in use?)` and exit 74 blamed the port. Now checked before the
    broker starts: one line naming both files, the usage code."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    rc = fleet_main(["serve", "--home", str(tmp_path / "fleet"), "--anonymous", "--http", "0",
                     "--tls-cert", str(junk), "--tls-key", str(junk)])
    out = capsys.readouterr()
    assert rc == exit_code("usage"), out.err
    assert "Traceback" not in out.err and "port in use" not in out.err
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("edge-fleet: error: --tls-cert ") and str(junk) in last and "not a PEM certificate" in last
    assert not (tmp_path / "fleet" / "broker").exists()  # refused before the embedded broker started


@pytest.mark.parametrize("what", ["text file", "folder", "garbage with a SQLite header"])
def test_a_db_that_is_not_a_registry_is_one_line_naming_it_and_the_registry_code(tmp_path, capsys, what):
    """`--db notes.txt` (or a folder, or a damaged file) printed `edge-fleet: error: file is not a database`: no
    file named, and exit 1, the code for a bug. Now the path and exit 62 (registry unusable)."""
    db = {"text file": tmp_path / "notes.txt", "folder": tmp_path,
          "garbage with a SQLite header": tmp_path / "broken.db"}[what]
    if what == "text file":
        db.write_text("not a database\n" * 100)
    elif what != "folder":
        db.write_bytes(b"SQLite format 3\x00" + b"garbage" * 1000)
    rc = fleet_main(["status", "--home", str(tmp_path / "home"), "--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("registry-unusable") == 62, err
    assert len(err) == 1 and err[0].startswith(f"edge-fleet: error: registry {db} cannot be used: "), err


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    """A server at --api that is not the fleet: a proxy's login page (200, HTML) or another service's JSON."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"status": "ok"}' if "/bundles" in self.path else b"<html><body>Sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def not_the_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", [["status"], ["bundles"], ["rollouts", "r-1"]])
def test_an_api_address_that_is_not_the_fleet_api_is_one_line_and_the_api_code(not_the_api, capsys, command):
    """`--api` at a proxy's HTML page said `Expecting value: line 1 column 1 (char 0)`, at another service's JSON
    `'items'`, both exit 1. Now the address that answered and exit 66 (API failed)."""
    rc = fleet_main(["--api", not_the_api, "--token", "t", *command])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("api-failed"), err
    assert len(err) == 1 and "did not answer as the fleet API does" in err[0] and not_the_api in err[0], err


@pytest.mark.parametrize(("option", "value"), [("--api-ca", "missing.pem"), ("--api-ca", "notes.txt"),
                                               ("--api", "http://[fleet"), ("--api", "https://")])
def test_a_bad_api_address_or_ca_file_is_a_usage_line_naming_it(tmp_path, capsys, option, value):
    """`--api-ca missing.pem` printed `[Errno 2] No such file or directory`, `--api http://[fleet` printed
    `Invalid IPv6 URL`: neither named the option, both exit 1 (a bug's code). Now usage (2), naming the option."""
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    if option == "--api-ca":
        value = str(tmp_path / value)
    args = {"--api": "http://127.0.0.1:9", "--api-ca": None, option: value}
    rc = fleet_main([*(a for k, v in args.items() if v is not None for a in (k, v)), "--token", "t", "status"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("usage"), err
    assert len(err) == 1 and err[0].startswith(f"edge-fleet: error: {option} ") and value in err[0], err


@pytest.mark.parametrize("command", [
    ["tokens", "create", "ci pipeline", "--role", "viewer"],  # a space in the token name
    ["publish", "no-such.edgebundle", "--trust", "key.pub"],
    ["deploy", "digits:2", "--devices", "a", "--min-shadow-agreement", "0.9", "--shadow-timeout", "900"],
])
def test_an_operators_wrong_value_is_the_usage_code_not_the_code_for_a_bug(tmp_path, capsys, command):
    """These printed a clear line but exited 1, which docs/exit-codes.md gives to `internal` failures (a bug: please
    report it): a CI job could not tell a typo from a crash. Now 2, like argparse's own refusals."""
    if "key.pub" in command:
        _, pub = generate_keypair(tmp_path / "keys")
        command = [str(pub) if a == "key.pub" else a for a in command]
    rc = fleet_main([*command, "--home", str(tmp_path / "fleet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("usage"), err
    assert len(err) == 1 and err[0].startswith("edge-fleet: error: "), err


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


@pytest.mark.parametrize("content", ['{"fleet_password": "x", "devices": {', '{"devices": {}}', "[]"])
def test_damaged_broker_logins_are_one_line_naming_the_file(tmp_path, capsys, content):
    """HOME/broker/logins.json edited by hand or truncated: `devices login` and `serve` printed
    `Expecting property name ...`, `'fleet_password'` or `list indices must be integers`, exit 1. Now the file,
    what to do, and the embedded broker's code (61); `devices list` still lists the devices."""
    logins = tmp_path / "fleet" / "broker" / "logins.json"
    logins.parent.mkdir(parents=True)
    logins.write_text(content)
    for command in (["devices", "login", "cam-1"], ["serve"]):
        rc = fleet_main([*command, "--home", str(tmp_path / "fleet")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == exit_code("broker-start-failed"), (command, err)
        assert err[-1].startswith(f"edge-fleet: error: broker logins {logins} are damaged ("), err
        assert "Traceback" not in "\n".join(err)
    assert fleet_main(["devices", "list", "--home", str(tmp_path / "fleet")]) == 0
    assert logins.read_text() == content  # left for the operator to restore


@pytest.mark.parametrize("command", [["serve", "--http", "0", "--max-upload", "-5"], ["audit", "--limit", "0"]])
def test_counts_below_one_are_refused_by_the_command_line(tmp_path, capsys, command):
    """`serve --max-upload -5` started, then refused every upload as `larger than the server's limit of -5 bytes`;
    `audit --limit 0` was refused by the command with exit 1. Both are argparse's usage error now."""
    with pytest.raises(SystemExit) as caught:
        fleet_main([*command, "--home", str(tmp_path / "fleet")])
    assert caught.value.code == exit_code("usage")
    assert f"argument {command[-2]}: must be at least 1, got {command[-1]}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["deploy", "digits:9", "--devices", "a"], ["rollouts", "r-nope"],
                                     ["halt", "r-nope"], ["tokens", "revoke", "nobody"]])
def test_a_json_command_that_fails_prints_one_json_error_object(tmp_path, capsys, command):
    """`edge-fleet ... --json` printed nothing on stdout when it failed, so `| jq .id` read no document (and
    exited 0 in a pipeline); edge-agent and edge-convert print an error object. Now edge-fleet does too."""
    rc = fleet_main([*command, "--json", "--home", str(tmp_path / "fleet")])
    out = capsys.readouterr().out
    record = json.loads(out)
    assert record == {"ok": False, "error": record["error"], "message": record["message"], "exit_code": rc}
    assert rc in (exit_code("unknown-bundle"), exit_code("not-found"))


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
        for sha, v in ((V1, 1), (V2, 2)):
            reg.add_bundle(_bundle(tmp_path, sha, v))
        for dev in ("a", "b"):
            reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
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


def test_serve_ignores_edge_fleet_api_from_the_environment(tmp_path, capsys, monkeypatch):
    """EDGE_FLEET_API exported on the fleet host (for the other commands) made `edge-fleet serve` refuse to start:
    `serve runs a fleet here; --api is for the other commands`, though no --api was given. Only the option is
    refused now; the variable still points the other commands at the API."""
    monkeypatch.setenv("EDGE_FLEET_API", "http://127.0.0.1:9")
    junk = tmp_path / "junk.pem"
    junk.write_text("x")
    rc = fleet_main(["serve", "--home", str(tmp_path / "fleet"), "--http", "0", "--tls-cert", str(junk),
                     "--tls-key", str(junk)])  # gets past the --api check, then stops at the TLS files (no broker)
    assert rc == exit_code("usage") and "--tls-cert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fleet_main(["serve", "--api", "http://127.0.0.1:9", "--home", str(tmp_path / "fleet")])
    assert "serve runs a fleet here" in capsys.readouterr().err
    assert fleet_main(["status", "--token", "t", "--home", str(tmp_path / "fleet")]) == exit_code("api-failed")
    assert "fleet API http://127.0.0.1:9 unreachable" in capsys.readouterr().err
