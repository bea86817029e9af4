"""`edge-device` against a real OpenSSH server: from nothing to a running agent with a flashed,
benchmarked bundle, then every bad input with its own code and the working model kept."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.errors import exit_code

from .device_fixtures import device, edge_device, sshd, x86_bundle  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(900)


def _status(capsys, dev) -> dict:
    code, out = edge_device(capsys, "status", *dev.args())
    assert code == 0, out
    return out["devices"][0]


def test_provision_from_nothing_to_a_flashed_benchmarked_agent(device, x86_bundle, capsys):  # noqa: F811
    setup = device.setup_result
    assert setup["ok"] and setup["profile"] == "x86-64-cpu" and setup["running"]
    assert setup["wheels"] >= 8 and (device.remote_dir / "venv" / "bin" / "edge-agent").exists()
    assert (device.home / "profile").read_text().strip() == "x86-64-cpu"
    assert len(list((device.home / "trusted").glob("*.pub"))) == 1 and not list(device.home.rglob("*.key"))

    code, probe = edge_device(capsys, "probe", *device.args())
    assert code == 0 and probe["devices"][0]["profile"] == "x86-64-cpu"
    assert probe["devices"][0]["agent_version"] == "0.1.0"

    unit = device.unit_dir / "edge-agent.service"
    text = unit.read_text()
    for line in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", f"ReadWritePaths={device.home}",
                 "StandardOutput=journal", "User=root"):
        assert line in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure < 3.0, security.stdout[-2000:]  # "OK" band; a unit without the hardening lines scores 9.6

    code, out = edge_device(capsys, "flash", str(x86_bundle), *device.args(), "--runs", "20")
    row = out["devices"][0]
    assert code == 0 and row["ok"], out
    assert row["active_slot"] in ("a", "b") and row["bundle"] == "digits"
    assert row["device_latency"]["p50_ms"] > 0 and row["host_latency"]["p50_ms"] > 0
    assert row["service_running"]
    st = _status(capsys, device)
    assert st["running"] and st["model"] == "digits" and st["phase"] == "succeeded"
    assert not list((device.remote_dir / "incoming").glob("*.edgebundle*"))  # nothing left half-copied

    # text mode: the device's figures next to the host's
    from edge_device.cli import main

    assert main(["-q", "flash", str(x86_bundle), *device.args(), "--runs", "5"]) == 0
    assert "latency p50/p99 ms: device" in capsys.readouterr().out


def test_unreachable_host(device, capsys):  # noqa: F811
    from .ports import free_port

    args = [f"root@127.0.0.1:{free_port()}", *device.server.cli_args(), "--timeout", "3"]
    code, out = edge_device(capsys, "probe", *args)
    assert code == exit_code("connection-failed") == 8
    assert "cannot connect" in out["devices"][0]["error"]


def test_refused_key(device, tmp_path, capsys):  # noqa: F811
    from .sshd_helpers import keygen

    other = keygen(tmp_path / "stranger")
    code, out = edge_device(capsys, "probe", device.server.target, "--identity", str(other),
                            "--known-hosts", str(device.server.known_hosts))
    assert code == exit_code("ssh-auth") == 81 and "login refused" in out["devices"][0]["error"]


def test_host_key_changed_or_unknown_is_never_accepted(device, tmp_path, capsys):  # noqa: F811
    from .sshd_helpers import keygen

    port = device.server.port
    fake = keygen(tmp_path / "fake_host")
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{port} " + " ".join((tmp_path / "fake_host.pub").read_text().split()[:2]) + "\n")
    base = [device.server.target, "--identity", str(device.server.identity)]
    code, out = edge_device(capsys, "probe", *base, "--known-hosts", str(changed), "--accept-new")
    assert code == exit_code("host-key") == 80 and "CHANGED" in out["devices"][0]["error"]
    assert changed.read_text().count("\n") == 1  # --accept-new never replaces a recorded key

    unknown = tmp_path / "empty_known_hosts"
    code, out = edge_device(capsys, "probe", *base, "--known-hosts", str(unknown))
    assert code == 80 and "unknown" in out["devices"][0]["error"] and not unknown.exists()
    code, out = edge_device(capsys, "probe", *base, "--known-hosts", str(unknown), "--accept-new")
    assert code == 0 and str(port) in unknown.read_text()
    code, out = edge_device(capsys, "probe", *base, "--known-hosts", str(unknown))
    assert code == 0  # learned once, checked from then on
    assert fake.exists()


def test_no_python_on_the_device(device, digits, capsys):  # noqa: F811
    code, out = edge_device(capsys, "setup", *device.args(), "--python", "/nonexistent/python3.11",
                            "--broker", "mqtt://127.0.0.1:1", "--trust", str(digits.pub), "--service-user", "root",
                            "--unit-dir", str(device.unit_dir))
    assert code == exit_code("no-python") == 82 and "no Python >= 3.10" in out["devices"][0]["error"]
    assert _status(capsys, device)["running"]


def test_failed_install_leaves_the_running_agent(device, digits, tmp_path, capsys):  # noqa: F811
    code, out = edge_device(capsys, "setup", *device.args(), "--index-url", (tmp_path / "no-index").as_uri(),
                            "--broker", "mqtt://127.0.0.1:1", "--trust", str(digits.pub), "--service-user", "root",
                            "--unit-dir", str(device.unit_dir))
    assert code == exit_code("setup-failed") == 87 and "installing the agent failed" in out["devices"][0]["error"]
    assert _status(capsys, device)["running"]


def test_private_key_is_never_pushed(device, digits, capsys):  # noqa: F811
    code, out = edge_device(capsys, "setup", *device.args(), "--broker", "mqtt://x:1", "--trust", str(digits.key))
    assert code == exit_code("usage") and "private keys are never pushed" in out["devices"][0]["error"]


def test_bundle_for_another_profile_keeps_the_model(device, x86_bundle, int8_bundle, capsys):  # noqa: F811
    """It was copied whole before the device refused it, with a message naming --allow-profile-mismatch, an option
    flash does not have: now refused on the host, nothing pushed, one line naming no missing option."""
    from edge_device.cli import main

    before = _status(capsys, device)
    code = main(["flash", str(int8_bundle), *device.args()])
    err = capsys.readouterr().err
    error = err.strip().splitlines()[-1]
    assert code == exit_code("profile-mismatch") == 17 and "'raspberry-pi-4'" in error and "(not pushed)" in error, err
    assert "pushing" not in err and "--allow-profile-mismatch" not in err, err
    after = _status(capsys, device)
    assert (after["model"], after["active_slot"]) == (before["model"], before["active_slot"])


def test_interrupted_copy_installs_nothing_then_resumes(device, digits, tmp_path, capsys, monkeypatch):  # noqa: F811
    from converter.cli import main as convert
    from .conftest import convert_args

    v2 = tmp_path / "digits-x86-v2.edgebundle"
    assert convert(convert_args(digits, v2, "x86-64-cpu", "--model-version", "7")) == 0
    before = _status(capsys, device)
    monkeypatch.setenv("EDGEKIT_TEST_STOP_COPY_AFTER", "20000")
    code, out = edge_device(capsys, "flash", str(v2), *device.args())
    assert code == exit_code("copy-interrupted") == 84 and "run the same command again" in out["devices"][0]["error"]
    assert list((device.remote_dir / "incoming").glob("*.part"))
    assert _status(capsys, device)["version"] == before["version"]
    monkeypatch.delenv("EDGEKIT_TEST_STOP_COPY_AFTER")
    code, out = edge_device(capsys, "flash", str(v2), *device.args(), "--runs", "5")
    assert code == 0 and out["devices"][0]["resumed_from"] == 20000 and out["devices"][0]["version"] == 7


def test_device_mid_update_is_left_alone(device, x86_bundle, capsys):  # noqa: F811
    before = _status(capsys, device)
    with open(device.home / "ota" / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as an update in progress holds it
        # v7 is active (the test above): without --allow-downgrade v1 is refused on the host (53) before the lock
        code, out = edge_device(capsys, "flash", str(x86_bundle), *device.args(), "--runs", "5", "--allow-downgrade")
    assert code == exit_code("busy") == 85 and "another update is running" in out["devices"][0]["error"]
    assert _status(capsys, device)["version"] == before["version"]


def test_flashing_an_older_version_back_needs_allow_downgrade_and_works_with_it(device, digits, x86_bundle, tmp_path,  # noqa: F811
                                                                               capsys):
    """Putting the previous version back after a bad one said "the fleet must mark it a rollback", after the copy:
    there is no fleet here and flash had no option for it."""
    from converter.cli import main as convert
    from .conftest import convert_args

    v9 = tmp_path / "digits-x86-v9.edgebundle"
    assert convert(convert_args(digits, v9, "x86-64-cpu", "--model-version", "9")) == 0
    assert edge_device(capsys, "flash", str(v9), *device.args(), "--runs", "5")[0] == 0
    code, out = edge_device(capsys, "flash", str(x86_bundle), *device.args(), "--runs", "5")
    error = out["devices"][0]["error"]
    assert code == exit_code("downgrade") == 53 and "(not pushed)" in error and "--allow-downgrade" in error, out
    assert _status(capsys, device)["version"] == 9
    from edge_device.cli import main

    capsys.readouterr()  # and the progress names the slot, not the model ("installed into slot digits")
    code = main(["flash", str(x86_bundle), *device.args(), "--runs", "5", "--allow-downgrade"])
    err = capsys.readouterr().err
    slot = _status(capsys, device)
    assert code == 0 and slot["version"] == 1 and f"installed into slot {slot['active_slot']}\n" in err, err


def test_copies_left_by_interrupted_flashes_are_removed_by_the_next(device, x86_bundle, capsys):  # noqa: F811
    """A host killed after the copy left the full bundle in incoming/, and a .part of another bundle was never
    resumed: both stayed on the device's disk for good (a device that fills up then fails every flash with 18)."""
    incoming = device.remote_dir / "incoming"
    (incoming / "fedcba9876543210.edgebundle.part").write_bytes(x86_bundle.read_bytes()[:20000])  # another's copy, cut
    shutil.copy(x86_bundle, incoming / "0123456789abcdef.edgebundle")  # as a flash killed before its clean-up left it
    left = sorted(p.name for p in incoming.glob("*.edgebundle*"))
    assert len(left) == 2, left
    code, out = edge_device(capsys, "flash", str(x86_bundle), *device.args(), "--runs", "5", "--allow-downgrade")
    assert code == 0, out
    assert not list(incoming.glob("*.edgebundle*")), sorted(p.name for p in incoming.iterdir())


def _unmount(path) -> None:
    """umount, waiting out the device side's SSH session that may still hold the folder a moment after the
    flash returned ("target is busy" when this test ran alone); lazily detached if it never lets go."""
    import time

    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], check=True)


def test_no_space_left(device, x86_bundle, capsys):  # noqa: F811
    incoming = device.remote_dir / "incoming"
    shutil.rmtree(incoming)
    incoming.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(incoming)]).returncode != 0:
        pytest.fail("this test needs root to mount a small tmpfs")
    try:
        code, out = edge_device(capsys, "flash", str(x86_bundle), *device.args())
        from .fault_helpers import fill

        fill(incoming)  # completely full: df says 0 free, which was read as "unknown" and the push failed as 84
        full_code, full = edge_device(capsys, "flash", str(x86_bundle), *device.args())
        left = [p.name for p in incoming.iterdir() if p.name.endswith(".part")]
    finally:
        _unmount(incoming)
    assert code == exit_code("disk-space") == 18 and "free some space" in out["devices"][0]["error"]
    assert full_code == 18 and "0 MB free" in full["devices"][0]["error"] and not left, (full, left)


def test_many_devices_one_table_one_failure_stops_nothing(device, x86_bundle, tmp_path, capsys):  # noqa: F811
    from .ports import free_port

    inv = tmp_path / "lab.toml"
    inv.write_text(f"""
[defaults]
user = "root"
identity = "{device.server.identity}"
known_hosts = "{device.server.known_hosts}"
remote_dir = "{device.remote_dir}"

[[device]]
name = "good"
host = "127.0.0.1"
port = {device.server.port}
groups = ["lab"]

[[device]]
name = "gone"
host = "127.0.0.1"
port = {free_port()}
groups = ["lab"]

[[device]]
name = "not-set-up"
host = "127.0.0.1"
port = {device.server.port}
remote_dir = "/nonexistent/edgekit"
groups = ["lab"]
""")
    from edge_device.cli import main

    code = main(["-q", "status", "--inventory", str(inv), "--group", "lab", "--timeout", "3"])
    table = capsys.readouterr().out
    assert code == exit_code("devices-failed") == 88
    assert "1/3 devices ok" in table and "FAIL 8" in table and "FAIL 86" in table


def test_setup_gives_the_agent_its_fleet_login_and_refuses_a_wrong_one(device, digits, tmp_path, capsys,
                                                                         monkeypatch):  # noqa: F811
    """`edge-fleet devices login` -> `edge-device setup --fleet-login --mqtt-tls-ca`: the service logs in over TLS to
    a Mosquitto that runs the fleet's logins and ACL; a wrong password (from stdin) is exit 89, the login kept."""
    import io
    import ssl
    import stat

    import paho.mqtt.client as mqtt

    from edge_fleet.broker import TlsListener, start_broker
    from edge_fleet.broker.logins import FLEET_USER, BrokerLogins
    from edge_fleet.broker.mosquitto_config import render_acl
    from edge_fleet.cli import main as fleet

    from .ota_helpers import wait_for
    from .test_ota_tls import make_pki

    fleet_home = tmp_path / "fleet"
    capsys.readouterr()
    assert fleet(["devices", "login", "dev-ssh", "--home", str(fleet_home), "--json"]) == 0
    login_json = tmp_path / "login.json"
    login_json.write_text(capsys.readouterr().out)
    logins, _ = BrokerLogins.load_or_create(fleet_home / "broker")
    password = logins.devices["dev-ssh"]
    (tmp_path / "acl.conf").write_text(render_acl("edgekit", FLEET_USER))
    pki = make_pki(tmp_path / "pki")
    ca = pki["ca"][0]
    broker = start_broker(tmp_path / "mosq", prefer="mosquitto", fallback=False, users=logins.users(),
                          acl_file=tmp_path / "acl.conf", tls=TlsListener(ca, *pki["server"], require_certificate=False))
    url = f"mqtts://{broker.host}:{broker.port}"
    base = ["setup", *device.args(), "--unit-dir", str(device.unit_dir), "--broker", url, "--trust", str(digits.pub),
            "--service-user", "root", "--mqtt-tls-ca", str(ca)]
    creds = device.remote_dir / "credentials.env"
    got: list[bytes] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-watch")
    watcher.username_pw_set(FLEET_USER, logins.fleet_password)
    watcher.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    watcher.on_message = lambda _c, _u, m: got.append(m.payload)
    watcher.on_connect = lambda c, _u, _f, rc, _p: c.subscribe("edgekit/devices/dev-ssh/presence", 1)
    try:
        watcher.connect(broker.host, broker.port)
        watcher.loop_start()
        code, out = edge_device(capsys, *base, "--fleet-login", str(login_json))
        row = out["devices"][0]
        assert code == 0 and row["device_id"] == "dev-ssh", out
        assert row["broker"] == {"credentials": str(creds), "check": "accepted"}
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600 and f"PASSWORD={password}\n" in creds.read_text()
        assert (device.remote_dir / "broker-ca.pem").read_bytes() == ca.read_bytes()
        unit = (device.unit_dir / "edge-agent.service").read_text()
        assert f"--credentials {creds}" in unit and password not in unit
        wait_for(lambda: any(b'"online"' in p for p in got), what="the provisioned agent to log in")
        pid = (device.remote_dir / "agent.pid").read_text().strip()
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # not in `ps`

        monkeypatch.setattr("sys.stdin", io.StringIO("not-the-password\n"))
        code, out = edge_device(capsys, *base, "--device-id", "dev-ssh", "--mqtt-password-file", "-")
        error = out["devices"][0]["error"]
        assert code == exit_code("broker-login") == 89 and "refused the login of user 'dev-ssh'" in error
        assert f"PASSWORD={password}\n" in creds.read_text() and not creds.with_name("credentials.env.new").exists()
        assert _status(capsys, device)["running"] and (device.remote_dir / "agent.pid").read_text().strip() == pid
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        broker.stop()


def test_setup_from_the_devices_own_index(device, digits, tmp_path, capsys):  # noqa: F811
    """`--index-url`: no wheelhouse is pushed; pip on the device installs from the device's own (PEP 503) index,
    here a local folder laid out as one, made from the wheels the first setup pushed."""
    index = tmp_path / "simple"
    for wheel in (device.remote_dir / "wheelhouse").glob("*.whl"):
        project = index / re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        project.mkdir(parents=True, exist_ok=True)
        (project / wheel.name).symlink_to(wheel)
    for project in index.iterdir():  # pip reads a file: index's pages as index.html
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(project.glob("*.whl")))
        (project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    before = {w.name: w.stat().st_mtime for w in (device.remote_dir / "wheelhouse").glob("*.whl")}
    code, out = edge_device(capsys, "setup", *device.args(), "--index-url", index.as_uri(), "--broker",
                            "mqtt://127.0.0.1:1", "--trust", str(digits.pub), "--service-user", "root",
                            "--unit-dir", str(device.unit_dir))
    row = out["devices"][0]
    assert code == 0 and row["running"] and row["wheels"] is None, out
    assert {w.name: w.stat().st_mtime for w in (device.remote_dir / "wheelhouse").glob("*.whl")} == before
    assert _status(capsys, device)["running"]


def test_a_flash_into_a_device_whose_service_is_down_says_so(device, x86_bundle, capsys):  # noqa: F811
    """The model was installed and the line read as a plain success ("active in slot a"), while nothing served it."""
    import os

    from edge_device.cli import main

    pid_file = device.remote_dir / "agent.pid"
    pid = pid_file.read_text().strip()
    subprocess.run(["kill", pid], check=True)
    exec_start = next(ln for ln in (device.unit_dir / "edge-agent.service").read_text().splitlines()
                      if ln.startswith("ExecStart="))[len("ExecStart="):]
    try:
        for _ in range(100):  # gone (the agent stops within its own shutdown)
            if not Path(f"/proc/{pid}").exists():
                break
            subprocess.run(["sleep", "0.1"])
        capsys.readouterr()
        code = main(["-q", "flash", str(x86_bundle), *device.args(), "--runs", "5", "--allow-downgrade"])
        out = capsys.readouterr().out
    finally:  # the service back as setup started it, for the tests after this one
        agent = subprocess.Popen(["sh", "-c", f"exec {exec_start}"], start_new_session=True, cwd="/",
                                 env={**os.environ, "EDGE_AGENT_HOME": str(device.home)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid_file.write_text(f"{agent.pid}\n")
    assert code == 0 and "active in slot" in out and "service is STOPPED" in out, out
