"""The agent's broker login from a 0600 file (never on its command line) against a real Mosquitto with the
fleet's logins and ACL, its one-shot `--check-connection`, and systemd readiness/watchdog over a real
NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from edge_agent.errors import exit_code
from edge_agent.ota.credentials import BrokerCredentials, CredentialsError, read_credentials, resolve_credentials
from edge_fleet.broker import start_broker
from edge_fleet.broker.logins import FLEET_USER, BrokerLogins
from edge_fleet.broker.mosquitto_config import render_acl

from .ota_fixtures import PROFILE, install
from .ota_helpers import AgentProcess, login_client, wait_for

pytestmark = pytest.mark.timeout(300)
DEVICE = "pi-login-1"


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory):
    """Mosquitto as the fleet's embedded broker runs it: logins from the fleet home, the fleet's ACL."""
    folder = tmp_path_factory.mktemp("fleet-broker")
    logins, _ = BrokerLogins.load_or_create(folder / "logins")
    logins.add_device(DEVICE)
    (folder / "acl.conf").write_text(render_acl("edgekit", FLEET_USER))
    broker = start_broker(folder / "mosq", prefer="mosquitto", fallback=False, users=logins.users(),
                          acl_file=folder / "acl.conf")
    yield broker, logins
    broker.stop()


@pytest.fixture(scope="module")
def served_home(int8_bundle, digits, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("login-home") / "agent"
    assert install(home, int8_bundle, digits.pub) == 0
    return home


def _credentials(path: Path, creds: BrokerCredentials) -> Path:
    path.write_text(creds.render())
    path.chmod(0o600)
    return path


def test_credentials_file_format_and_precedence(tmp_path):
    odd = "p#s= 'w\"d\\$x"  # kept literally: no quoting rules to get wrong
    f = _credentials(tmp_path / "c.env", BrokerCredentials("dev", odd, "/ca.pem"))
    assert read_credentials(f) == BrokerCredentials("dev", odd, "/ca.pem")
    env = {"EDGE_AGENT_MQTT_USERNAME": "env-user", "EDGE_AGENT_MQTT_PASSWORD": "env-pw"}
    assert resolve_credentials(BrokerCredentials(password="cli"), f, env) == BrokerCredentials("dev", "cli", "/ca.pem")
    assert resolve_credentials(BrokerCredentials(), None, env) == BrokerCredentials("env-user", "env-pw", None)
    (tmp_path / "bad.env").write_text("PASSWORD=x\n")
    with pytest.raises(CredentialsError, match="line 1"):
        read_credentials(tmp_path / "bad.env")
    with pytest.raises(CredentialsError, match="one line"):
        BrokerCredentials("dev", "two\nlines").render()


def _check(home: Path, broker_url: str, creds: Path | None, capsys) -> tuple[int, str]:
    from edge_agent.cli import main

    capsys.readouterr()
    code = main(["--home", str(home), "serve", "--broker", broker_url, "--device-id", DEVICE, "--profile", PROFILE,
                 *(["--credentials", str(creds)] if creds else []), "--check-connection", "--json"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_connection_accepts_the_login_and_names_a_refused_one(fleet_broker, tmp_path, capsys):
    broker, logins = fleet_broker
    url = f"mqtt://{broker.host}:{broker.port}"
    good = _credentials(tmp_path / "good.env", BrokerCredentials(DEVICE, logins.devices[DEVICE]))
    code, out = _check(tmp_path / "home", url, good, capsys)
    assert code == 0 and json.JSONDecoder().raw_decode(out)[0]["username"] == DEVICE

    wrong = _credentials(tmp_path / "wrong.env", BrokerCredentials(DEVICE, "not-the-password"))
    code, out = _check(tmp_path / "home", url, wrong, capsys)
    assert code == exit_code("broker-login") == 89
    assert f"refused the login of user '{DEVICE}'" in out and f"edge-fleet devices login {DEVICE}" in out
    code, out = _check(tmp_path / "home", url, None, capsys)  # the fleet's broker never takes anonymous clients
    assert code == 89 and "anonymous" in out

    from .ports import free_port

    code, out = _check(tmp_path / "home", f"mqtt://127.0.0.1:{free_port()}", good, capsys)
    assert code == exit_code("connection-failed") == 8 and "cannot reach the broker" in out
    code, out = _check(tmp_path / "home", url, tmp_path / "missing.env", capsys)
    assert code == exit_code("usage") and "missing.env" in out


def test_check_connection_takes_the_json_edge_fleet_devices_login_prints(fleet_broker, tmp_path, capsys):
    """docs/fleet.md: `edge-fleet devices login ID --json` gives a device its login, `edge-agent serve --credentials
    FILE` reads it; the agent refused that JSON (it read only KEY=VALUE lines)."""
    from edge_fleet.cli import main as fleet_main

    broker, logins = fleet_broker
    capsys.readouterr()
    assert fleet_main(["devices", "login", "some-device", "--json", "--home", str(tmp_path / "fleet")]) == 0
    printed = json.loads(capsys.readouterr().out)  # the shape the fleet prints; this broker knows DEVICE's login
    printed.update(device_id=DEVICE, username=DEVICE, password=logins.devices[DEVICE])
    creds = _credentials(tmp_path / "login.json", BrokerCredentials())
    creds.write_text(json.dumps(printed, indent=2))
    code, out = _check(tmp_path / "home", f"mqtt://{broker.host}:{broker.port}", creds, capsys)
    assert code == 0 and json.JSONDecoder().raw_decode(out)[0]["username"] == DEVICE
    creds.write_text(json.dumps({**printed, "device_id": "other-device"}))  # another device's login: refused
    code, out = _check(tmp_path / "home", f"mqtt://{broker.host}:{broker.port}", creds, capsys)
    assert code == exit_code("usage") and "login of device 'other-device'" in out
    creds.write_text('{"user": "x"}')
    code, out = _check(tmp_path / "home", f"mqtt://{broker.host}:{broker.port}", creds, capsys)
    assert code == exit_code("usage") and "nor the JSON `edge-fleet devices login ID --json` prints" in out


@pytest.mark.parametrize("device_id", ["d\u00e9v", "", "_x", "a" * 65, "a/b"])
def test_a_device_id_the_fleet_would_refuse_is_a_usage_error_before_any_login(fleet_broker, tmp_path, capsys,
                                                                             device_id):
    """--check-connection used to log in with it (then suggest `edge-fleet devices login ID`, which refuses that
    id) and `serve` failed later with code 1: the id is checked as the option is read."""
    from edge_agent.cli import main

    broker, logins = fleet_broker
    good = _credentials(tmp_path / "good.env", BrokerCredentials(DEVICE, logins.devices[DEVICE]))
    capsys.readouterr()
    try:
        code = main(["--home", str(tmp_path / "home"), "serve", "--broker", f"mqtt://{broker.host}:{broker.port}",
                     "--device-id", device_id, "--profile", PROFILE, "--credentials", str(good), "--check-connection"])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    assert code == exit_code("usage")
    err = capsys.readouterr().err
    assert "--device-id" in err and "must be 1-64 of [A-Za-z0-9._-]" in err


def test_check_connection_over_tls_names_a_wrong_ca(fleet_broker, tmp_path, capsys):
    from edge_fleet.broker import TlsListener

    from .test_ota_tls import make_pki

    _, logins = fleet_broker
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-pki")
    broker = start_broker(tmp_path / "mosq", prefer="mosquitto", fallback=False, users=logins.users(),
                          tls=TlsListener(pki["ca"][0], *pki["server"], require_certificate=False))
    try:
        url = f"mqtts://{broker.host}:{broker.port}"
        right = _credentials(tmp_path / "right.env", BrokerCredentials(DEVICE, logins.devices[DEVICE], str(pki["ca"][0])))
        assert _check(tmp_path / "home", url, right, capsys)[0] == 0
        wrong = _credentials(tmp_path / "wrong.env", BrokerCredentials(DEVICE, logins.devices[DEVICE], str(other["ca"][0])))
        code, out = _check(tmp_path / "home", url, wrong, capsys)
        assert code == exit_code("connection-failed") and "TLS with the broker" in out and "certificate" in out
    finally:
        broker.stop()


def test_agent_logs_in_from_its_credentials_file_never_from_its_command_line(fleet_broker, served_home, digits,
                                                                             tmp_path):
    broker, logins = fleet_broker
    url = f"mqtt://{broker.host}:{broker.port}"
    password = logins.devices[DEVICE]
    creds = _credentials(tmp_path / "credentials.env", BrokerCredentials(DEVICE, password))
    fleet, got, accepted = login_client(url, FLEET_USER, logins.fleet_password, "fleet-watch")
    assert accepted
    fleet.subscribe(f"edgekit/devices/{DEVICE}/presence", 1)
    agent = AgentProcess(served_home, url, DEVICE, digits.pub, extra=["--credentials", str(creds)])
    try:
        wait_for(lambda: any(b'"online"' in p for _, p in got), what="the agent to say it is online")
        cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline and str(creds).encode() in cmdline
    finally:
        agent.stop()
        fleet.disconnect()
        fleet.loop_stop()
    assert "refused" not in agent.output()


def test_a_refused_login_is_one_clear_line_and_the_agent_keeps_serving(fleet_broker, served_home, digits, tmp_path):
    broker, _ = fleet_broker
    creds = _credentials(tmp_path / "credentials.env", BrokerCredentials(DEVICE, "stale-password"))
    agent = AgentProcess(served_home, f"mqtt://{broker.host}:{broker.port}", DEVICE, digits.pub,
                         extra=["--credentials", str(creds)])
    try:
        wait_for(lambda: "refused the login" in agent.output(), what="the refusal in the log")
        assert agent.proc.poll() is None  # keeps retrying: the fleet may add the login later
    finally:
        agent.stop()
    line = next(ln for ln in agent.output().splitlines() if "refused the login" in ln)
    assert f"user '{DEVICE}'" in line and "credentials file" in line and "stale-password" not in line


def test_sd_notify_ready_then_watchdog_over_a_real_datagram_socket(served_home, digits, tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    from .ports import free_port

    agent = AgentProcess(served_home, f"mqtt://127.0.0.1:{free_port()}", DEVICE, digits.pub,
                         env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    try:
        messages = [sock.recv(4096).decode()]
        assert messages[0].splitlines()[0] == "READY=1", messages  # READY comes first, with what it serves
        assert "STATUS=serving digits v1" in messages[0]
        for _ in range(3):
            messages.append(sock.recv(4096).decode())
        assert messages[1:] == ["WATCHDOG=1"] * 3, messages
    finally:
        code = agent.stop()
        sock.settimeout(5)
        tail: list[str] = []
        while "STOPPING=1" not in tail:  # what was queued, then STOPPING=1 (a timeout fails the test)
            tail.append(sock.recv(4096).decode())
        sock.close()
    assert code == 0


def test_sd_notify_does_nothing_outside_systemd_and_knows_abstract_sockets():
    from edge_agent.ota.daemon.sd_notify import Notifier

    assert not Notifier({}).ready("x") and Notifier({}).watchdog_s is None
    n = Notifier({"NOTIFY_SOCKET": "@edgekit-test", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.address == "\0edgekit-test" and n.watchdog_s == 2.0
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_s is None
