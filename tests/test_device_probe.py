"""`edge-device` as an operator types it on a bad day, against a real OpenSSH server (no setup needed):
target spellings, inventory mistakes, each one line with its own exit code and no Python message."""

from __future__ import annotations

import pytest

from edge_agent.errors import exit_code
from edge_device.ssh import Target

from .device_fixtures import edge_device, sshd  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)
NOT_SET_UP = exit_code("not-set-up")


def _status(capsys, server, target: str, tmp_path) -> tuple[int, dict]:
    return edge_device(capsys, "status", target, *server.cli_args(), "--remote-dir", str(tmp_path / "none"))


def test_bracketed_addresses_and_ipv6_parse_to_host_and_port(sshd, capsys, tmp_path):  # noqa: F811
    t = Target.parse("pi@[::1]:2222")
    assert (t.user, t.host, t.port, t.where) == ("pi", "::1", 2222, "pi@[::1]:2222")
    assert (Target.parse("[fe80::1]").host, Target.parse("[fe80::1]").port) == ("fe80::1", 22)
    # the bracketed form reaches the device (not set up there: 86), not a DNS lookup of "[127.0.0.1]:PORT"
    code, out = _status(capsys, sshd, f"root@[127.0.0.1]:{sshd.port}", tmp_path)
    assert code == NOT_SET_UP, out


@pytest.mark.parametrize("spec", ["root@127.0.0.1:abc", "host:0", "host:70000", "pi@", "pi@[::1", "pi@[::1]x"])
def test_a_bad_target_is_a_usage_error_naming_it(spec, capsys):
    from edge_device.cli import main

    capsys.readouterr()
    code = main(["status", spec])
    err = capsys.readouterr().err
    assert code == exit_code("usage") and spec in err and "Traceback" not in err and "int()" not in err, err


def test_a_target_without_a_user_logs_in_as_the_local_user(sshd, capsys, tmp_path):  # noqa: F811
    code, out = _status(capsys, sshd, f"127.0.0.1:{sshd.port}", tmp_path)  # the tests run as root, sshd's user
    assert code == NOT_SET_UP, out


BAD_INVENTORIES = {
    "device-not-a-table": ('device = "cam-1"\n', "[[device]] table"),
    "defaults-not-a-table": ('defaults = 3\n[[device]]\nhost = "h"\n', "[[device]] table"),
    "misspelt-section": ('[[devices]]\nhost = "h"\n', "unknown sections ['devices']"),
    "port-not-a-number": ('[[device]]\nhost = "h"\nport = "22a"\n', "port must be a number"),
    "host-not-a-string": ('[[device]]\nhost = 5\n', "host must be a non-empty string"),
    "groups-a-string": ('[[device]]\nhost = "h"\ngroups = "lab"\n', "groups must be a list"),
    "misspelt-default": ('[defaults]\nidentiy = "k"\n[[device]]\nhost = "h"\n', "[defaults]: unknown keys ['identiy']"),
    "groups-none-match": ('[[device]]\nhost = "h"\ngroups = ["Lab", "dock"]\n', "group 'lab' (groups: Lab, dock)"),
    "same-name-twice": ('[[device]]\nname = "a"\nhost = "h1"\n[[device]]\nname = "a"\nhost = "h2"\n', "'a' appears twice"),
    "same-device-twice": ('[[device]]\nname = "a"\nhost = "h"\n[[device]]\nname = "b"\nhost = "h"\nport = 22\n',
                          "the same device"),
}


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_a_bad_inventory_is_one_usage_line_naming_the_file(case, tmp_path, capsys):
    from edge_device.cli import main

    text, expected = BAD_INVENTORIES[case]
    inv = tmp_path / "lab.toml"
    inv.write_text(text)
    capsys.readouterr()
    code = main(["status", "--inventory", str(inv), "--group", "lab"] if "groups" in case else
                ["status", "--inventory", str(inv)])
    err = capsys.readouterr().err.strip()
    assert code == exit_code("usage"), err
    assert err.startswith(f"edge-device: error: inventory {inv}") and expected in err and len(err.splitlines()) == 1


def test_one_device_named_twice_on_the_command_line_is_refused(sshd, capsys, tmp_path):  # noqa: F811
    """Two flashes at once on one device would race on its incoming copy and its A/B slots."""
    code, out = _status(capsys, sshd, f"root@127.0.0.1:{sshd.port}", tmp_path)
    assert code == NOT_SET_UP
    from edge_device.cli import main

    capsys.readouterr()
    code = main(["status", f"root@127.0.0.1:{sshd.port}", f"root@127.0.0.1:{sshd.port}", *sshd.cli_args()])
    err = capsys.readouterr().err
    assert code == exit_code("usage") and ("same device" in err or "appears twice" in err), err


@pytest.mark.parametrize("case", ["missing", "public", "passphrase"])
def test_a_bad_identity_file_is_named_not_blamed_on_the_device(case, sshd, capsys, tmp_path):  # noqa: F811
    """The key file is the operator's mistake: one line naming it and what to do, usage exit, nothing tried there."""
    import subprocess

    key = {"missing": tmp_path / "nokey", "public": sshd.identity.with_suffix(".pub"), "passphrase": tmp_path / "enc"}[case]
    if case == "passphrase":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-pass", "-f", str(key)], check=True)
    from edge_device.cli import main

    capsys.readouterr()
    code = main(["status", f"root@127.0.0.1:{sshd.port}", "--identity", str(key), "--known-hosts", str(sshd.known_hosts)])
    err = capsys.readouterr().err.strip()
    assert code == exit_code("usage"), err
    assert f"127.0.0.1:{sshd.port}" in err and str(key) in err and "sshd running" not in err and len(err.splitlines()) == 1
    assert "s3cret-pass" not in err


def test_a_second_flash_on_a_device_being_flashed_is_refused_as_busy(sshd, capsys, tmp_path):  # noqa: F811
    """Two flashes at once on one board (two operators, two inventories) shared its incoming copy: one removed
    the other's file mid-install ("error: No such file"). A flash holds a flock on the device; the holder
    here is a real flock process on the same file, as a running flash's is."""
    import os
    import signal
    import subprocess

    from edge_device.cli import main

    remote = tmp_path / "opt"
    (remote / "incoming").mkdir(parents=True)
    bundle = tmp_path / "m.edgebundle"
    bundle.write_bytes(b"not opened while the device is busy")
    argv = ["flash", str(bundle), sshd.target, *sshd.cli_args(), "--remote-dir", str(remote)]
    holder = subprocess.Popen(["flock", str(remote / "incoming" / ".flash.lock"), "sleep", "120"], start_new_session=True)
    try:
        for _ in range(100):  # flock has taken the lock once the file exists
            if (remote / "incoming" / ".flash.lock").exists():
                break
            subprocess.run(["sleep", "0.05"])
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == exit_code("busy") and "another edge-device flash is running" in err and sshd.target in err, err
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
        holder.wait()
    capsys.readouterr()
    assert main(argv) != exit_code("busy")  # released with its holder: the next flash goes on (to the bundle check)


def test_flashing_a_missing_bundle_file_is_a_usage_error_not_a_corrupt_bundle(sshd, capsys, tmp_path):  # noqa: F811
    from edge_device.cli import main

    for path in (tmp_path / "mdoel.edgebundle", tmp_path):  # a typo, a folder
        capsys.readouterr()
        code = main(["flash", str(path), sshd.target, *sshd.cli_args(), "--remote-dir", str(tmp_path / "opt")])
        err = capsys.readouterr().err
        assert code == exit_code("usage") and f"{path}: no such bundle file" in err and "re-download" not in err, err


@pytest.fixture
def plain_user():
    """A non-root login with no sudo rights (sudo absent here, or present without a sudoers entry)."""
    import secrets
    import subprocess

    user = f"probe{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)  # unlocked (no password) so sshd lets the key in
    yield user
    subprocess.run(["userdel", user], check=False, capture_output=True)


def test_a_login_without_sudo_is_told_to_log_in_as_root_or_get_passwordless_sudo(plain_user, capsys):
    """`sh: 1: sudo: not found` came back with the shell's 127 as edge-device's exit code (not one of its codes).
    Its own sshd in a world-readable folder: sshd reads authorized_keys as the user logging in."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from edge_device.cli import main

    from .sshd_helpers import start_sshd

    remote = Path(tempfile.mkdtemp(prefix="edgekit-probe-"))
    remote.chmod(0o755)
    sshd = start_sshd(remote / "sshd")
    try:
        (remote / "service.json").write_text(json.dumps({"broker": "mqtt://127.0.0.1:1", "device_id": "d",
                                                          "profile": "x86-64-cpu", "user": "root", "systemd": False}))
        capsys.readouterr()
        code = main(["status", f"{plain_user}@127.0.0.1:{sshd.port}", *sshd.cli_args(), "--remote-dir", str(remote)])
        err = capsys.readouterr().err.strip()
    finally:
        sshd.stop()
        shutil.rmtree(remote)
    assert code == exit_code("error"), err
    assert f"{plain_user} is not root" in err and "passwordless sudo" in err and len(err.splitlines()) == 1, err


def test_a_connection_dropped_mid_run_is_a_connection_failure_naming_the_host(tmp_path):
    """sshd's session for us killed between two commands (a link drop): was a bare "SSH connection closed", exit 1."""
    import asyncio
    import subprocess

    from edge_agent.errors import code_of
    from edge_device.ssh import connect

    from .sshd_helpers import start_sshd

    server = start_sshd(tmp_path / "sshd")
    target = Target.parse(server.target, identity=server.identity, known_hosts=server.known_hosts)

    async def drop_and_run() -> BaseException:
        try:
            async with connect(target) as dev:
                await dev.run("true", check=True)
                children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True)
                for pid in children.stdout.split():  # our session's sshd (the only one: this server is ours)
                    subprocess.run(["kill", "-9", pid], check=False)
                await dev.run("true", check=True)
        except Exception as exc:  # noqa: BLE001 - the error is what is checked
            return exc
        raise AssertionError("the second command ran over a killed session")

    try:
        exc = asyncio.run(drop_and_run())
    finally:
        server.stop()
    assert code_of(exc) == exit_code("connection-failed"), repr(exc)
    assert str(exc).startswith(f"{server.target}: connection lost"), exc


def test_the_summary_names_each_failed_device_once_and_the_others_finish(sshd, tmp_path, capsys):  # noqa: F811
    """A device down in the middle of a --parallel run: the others finish, the table says which failed and why,
    each on one line with the device's name once (it was "cam-2: cam-2: edgekit is not set up ...")."""
    from edge_device.cli import main

    from .ports import free_port

    rows = "".join(f'[[device]]\nname = "cam-{i}"\nhost = "127.0.0.1"\nport = {sshd.port}\nremote_dir = "{tmp_path}/d{i}"\n'
                   for i in range(3))
    inv = tmp_path / "lab.toml"
    inv.write_text(f'[defaults]\nuser = "root"\nidentity = "{sshd.identity}"\nknown_hosts = "{sshd.known_hosts}"\n'
                   f'{rows}[[device]]\nname = "gone"\nhost = "127.0.0.1"\nport = {free_port()}\n')
    capsys.readouterr()
    code = main(["-q", "status", "--inventory", str(inv), "--parallel", "8", "--timeout", "5"])
    table = capsys.readouterr().out
    assert code == exit_code("devices-failed"), table
    assert "0/4 devices ok" in table and table.count("FAIL 86") == 3 and "FAIL 8 " in table
    for name in ("cam-0", "cam-1", "cam-2", "gone"):
        assert f"{name}: {name}" not in table and f"\n{name}: " in table, table


def test_a_damaged_service_json_on_the_device_is_named_with_the_fix(sshd, tmp_path, capsys):  # noqa: F811
    """A truncated service.json was "error: Expecting property name ...", and one from a newer edge-device (an extra
    field) "ServiceConfig.__init__() got an unexpected keyword argument", both exit 1 with no host named."""
    import json

    from edge_device.cli import main

    remote = tmp_path / "opt"
    remote.mkdir()
    (remote / "service.json").write_text('{"broker": "mqtt://127.0.0.1:1", "dev')
    code, out = _status(capsys, sshd, sshd.target, tmp_path)  # the helper's remote dir is not set up: 86
    assert code == NOT_SET_UP
    capsys.readouterr()
    code = main(["status", sshd.target, *sshd.cli_args(), "--remote-dir", str(remote)])
    err = capsys.readouterr().err
    assert code == NOT_SET_UP and f"{sshd.target}: {remote}/service.json is damaged" in err and "setup" in err, err
    (remote / "service.json").write_text(json.dumps({"broker": "mqtt://127.0.0.1:1", "device_id": "d", "user": "root",
                                                     "profile": "x86-64-cpu", "systemd": False, "added_later": 1}))
    capsys.readouterr()
    code = main(["status", sshd.target, *sshd.cli_args(), "--remote-dir", str(remote)])
    err = capsys.readouterr().err
    assert "unexpected keyword" not in err and "edge-agent status" in err, err  # read; on to the agent (none here)


def test_an_unknown_host_name_is_not_blamed_on_sshd(capsys, tmp_path):
    from edge_device.cli import main

    capsys.readouterr()
    code = main(["status", "pi@cam-1.invalid:2222", "--known-hosts", str(tmp_path / "known_hosts"), "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == exit_code("connection-failed"), err
    assert "pi@cam-1.invalid:2222: unknown host name 'cam-1.invalid'" in err and "sshd running" not in err, err


def test_a_shell_rc_that_prints_does_not_garble_what_the_device_answers(capsys):
    """Some boards' ~/.bashrc prints a banner for every SSH command: `id -u` was read as "Welcome ...\\n1001",
    "invalid literal for int()", exit 1, on every command."""
    import secrets
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from edge_device.cli import main

    from .sshd_helpers import start_sshd

    user = f"probe{secrets.token_hex(3)}"
    folder = Path(tempfile.mkdtemp(prefix="edgekit-probe-"))
    folder.chmod(0o755)  # sshd reads authorized_keys as the user logging in
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)
    sshd = start_sshd(folder / "sshd")
    try:
        home = Path(f"/home/{user}")
        (home / ".bashrc").write_text('echo "Welcome to the board"\n')  # bash reads it for sshd's commands
        capsys.readouterr()
        code = main(["probe", f"{user}@127.0.0.1:{sshd.port}", *sshd.cli_args(), "--json"])
        out, err = capsys.readouterr()
    finally:
        sshd.stop()
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)
        shutil.rmtree(folder)
    assert code == 0, err
    import json

    row = json.loads(out)["devices"][0]
    assert row["root"] is False and row["facts"]["arch"] and row["python_ok"], row


def test_targets_and_an_inventory_together_are_refused_not_the_targets_ignored(sshd, tmp_path, capsys):  # noqa: F811
    """`flash b.edgebundle cam-9 --inventory lab.toml` worked on every device of lab.toml, cam-9 ignored."""
    from edge_device.cli import main

    inv = tmp_path / "lab.toml"
    inv.write_text(f'[[device]]\nname = "cam-1"\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "root"\n'
                   f'identity = "{sshd.identity}"\nknown_hosts = "{sshd.known_hosts}"\ngroups = ["lab"]\n')
    for argv in (["status", sshd.target, "--inventory", str(inv)], ["status", sshd.target, "--group", "lab"]):
        capsys.readouterr()
        code = main([*argv, *sshd.cli_args(), "--remote-dir", str(tmp_path / "none")])
        out, err = capsys.readouterr()
        assert code == exit_code("usage") and not out and "cam-1" not in err, (out, err)
        assert "--inventory" in err and len(err.strip().splitlines()) == 1, err


def test_accept_new_into_a_known_hosts_path_that_cannot_be_written_names_it(sshd, tmp_path, capsys):  # noqa: F811
    from edge_device.cli import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    known = blocker / "known_hosts"  # its "folder" is a file
    capsys.readouterr()
    code = main(["status", sshd.target, "--identity", str(sshd.identity), "--known-hosts", str(known), "--accept-new",
                 "--remote-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert code == exit_code("usage"), err
    assert f"{sshd.target}: cannot record its host key in --known-hosts {known}" in err and "Errno" not in err, err


@pytest.mark.parametrize("broker", ["fleet:1883", "mqtt://cam-1:s3cret-pw@fleet:1883"])
def test_setup_checks_the_broker_url_first_and_refuses_a_password_in_it(broker, sshd, tmp_path, capsys):  # noqa: F811
    """A typo went on into the install (found later by the service, or as 87 here); a password in the URL would be
    written into the unit file, the process list and the progress lines."""
    from edge_device.cli import main

    from edge_agent.bundle import generate_keypair

    _, pub = generate_keypair(tmp_path / "keys")
    capsys.readouterr()
    code = main(["setup", sshd.target, *sshd.cli_args(), "--remote-dir", str(tmp_path / "opt"), "--unit-dir",
                 str(tmp_path / "units"), "--broker", broker, "--trust", str(pub)])
    out, err = capsys.readouterr()
    assert code == exit_code("usage") and err.startswith("edge-device: error: --broker "), err
    assert "s3cret-pw" not in out + err and not (tmp_path / "opt").exists()  # nothing done on the device


def test_setup_names_a_python_path_that_is_not_on_the_device(sshd, tmp_path, capsys):  # noqa: F811
    """It said "no Python >= 3.10 on the device (none found): ... or pass --python PATH" to one who had passed it."""
    from edge_agent.bundle import generate_keypair
    from edge_device.cli import main

    _, pub = generate_keypair(tmp_path / "keys")
    capsys.readouterr()
    code = main(["setup", sshd.target, *sshd.cli_args(), "--remote-dir", str(tmp_path / "opt"), "--unit-dir",
                 str(tmp_path / "units"), "--broker", "mqtt://127.0.0.1:1", "--trust", str(pub),
                 "--python", "/opt/nowhere/python3.12"])
    err = capsys.readouterr().err
    assert code == exit_code("no-python"), err
    assert f"{sshd.target}: --python /opt/nowhere/python3.12: not found" in err and "none found" not in err, err


@pytest.mark.parametrize("command", [["flash", "b.edgebundle"], ["status"]])
def test_flash_and_status_take_no_python_they_would_ignore(command, capsys):
    """Both accepted --python and did nothing with it: they run the agent from the venv setup made with its Python."""
    from edge_device.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*command, "pi@cam-1", "--python", "/usr/bin/python3.11"])
    assert exc.value.code == 2 and "unrecognized arguments: --python" in capsys.readouterr().err
    for ok in (["probe", "pi@cam-1"], ["setup", "pi@cam-1", "--broker", "mqtt://b:1883", "--trust", "k.pub"]):
        assert build_parser().parse_args([*ok, "--python", "/usr/bin/python3.11"]).python == "/usr/bin/python3.11"


@pytest.mark.parametrize("flag", ["-q", "-v"])
def test_quiet_and_verbose_are_taken_after_the_command_too(flag, sshd, tmp_path, capsys):  # noqa: F811
    """`edge-device flash b.edgebundle pi@cam-1 -q` (where the docs put every other option) was a usage error."""
    from edge_device.cli import main

    capsys.readouterr()
    code = main(["status", sshd.target, *sshd.cli_args(), "--remote-dir", str(tmp_path / "none"), flag])
    err = capsys.readouterr().err
    assert code == NOT_SET_UP and "unrecognized arguments" not in err, err
