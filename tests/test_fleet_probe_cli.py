"""Defects found by probing `edge-fleet` as an operator would: odd options, files that are not what they
should be, an --api address that is not the fleet. Each test names what the operator saw before the fix: every
failure is now one line and the exit code docs/exit-codes.md gives it (with --json, one JSON document).
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Iterator

import pytest

from edge_agent.bundle import generate_keypair
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import exit_code


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


def test_deploy_refuses_empty_stages_as_the_api_does(tmp_path, capsys):
    """`deploy --stages "$STAGES"` with the variable unset deployed with the default 5,25,100 without a word (the
    API refuses an empty list). Now the same usage error as `--stages 0`."""
    rc = fleet_main(["deploy", "digits:2", "--devices", "a", "--stages", "", "--home", str(tmp_path / "fleet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("usage") and err == ["edge-fleet: error: --stages must increase and end at 100 "
                                                "(e.g. 5,25,100), got ''"], err


def test_local_options_work_before_the_command_as_api_and_token_do(tmp_path, capsys):
    """`edge-fleet --home H status` said `argument cmd: invalid choice: 'H'` and `edge-fleet --json status`
    `unrecognized arguments: --json`, though `edge-fleet --api URL status` works: now all of them go either side."""
    home = str(tmp_path / "fleet")
    assert fleet_main(["--home", home, "--json", "rollouts", "r-nope"]) == exit_code("not-found")
    assert json.loads(capsys.readouterr().out)["error"] == "not-found"
    assert fleet_main(["--db", str(tmp_path / "other.db"), "-v", "bundles", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [] and (tmp_path / "other.db").is_file()
    assert fleet_main(["--home", str(tmp_path / "not-this"), "status", "--home", home]) == 0  # the later one wins
    assert (tmp_path / "fleet" / "fleet.db").is_file() and not (tmp_path / "not-this").exists()


def test_deploy_wait_that_runs_out_is_its_own_code_not_the_code_for_a_bug(tmp_path, capsys):
    """`deploy --wait --wait-timeout S` with no server driving the rollout exited 1, the code docs/exit-codes.md gives
    to a bug: a CI job could not tell "still running" from a crash. Now 68 (wait-timeout), saying it goes on."""
    from edge_fleet.registry import open_registry

    from .test_fleet_rollout_states import _two_devices_on_v1

    home = tmp_path / "fleet"
    with open_registry(home / "fleet.db", store_dir=home / "bundles") as reg:
        _two_devices_on_v1(reg, tmp_path)
    rc = fleet_main(["deploy", "digits:2", "--devices", "a", "--wait", "--wait-timeout", "0.3", "--home", str(home)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == exit_code("wait-timeout") == 68, err
    assert len(err) == 1 and "still pending after 0s (is `edge-fleet serve` running?); it goes on" in err[0], err
