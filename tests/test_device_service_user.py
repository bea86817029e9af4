"""`edge-device setup` with a dedicated service user, as on a real board (the other device tests use root):
setup creates the system user, the agent home and the broker login belong to it (login 0600), the service
and every `edge-agent` command setup and flash run on the device run as that user."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from edge_agent.errors import exit_code

from .device_fixtures import edge_device, sshd, x86_bundle  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(900)
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"


def test_a_dedicated_service_user_owns_the_agent_and_its_login(sshd, digits, x86_bundle, tmp_path, capsys):  # noqa: F811
    import os
    import pwd

    user = f"edgekit-t{os.getpid() % 100000}"
    root = Path(tempfile.mkdtemp(prefix="edgekit-user-", dir="/var/tmp"))  # pytest's tmp folders are 0700
    root.chmod(0o755)
    remote = root / "opt-edgekit"
    password_file = tmp_path / "password"
    password_file.write_text("pw-of-the-service-user\n")
    args = [sshd.target, *sshd.cli_args(), "--remote-dir", str(remote)]
    setup = ["setup", *args, "--unit-dir", str(root / "units"), "--broker", "mqtt://127.0.0.1:1", "--trust",
             str(digits.pub), "--service-user", user, "--device-id", "cam-user", "--mqtt-password-file",
             str(password_file)]
    private = tmp_path / "private"  # 0700, as pyenv's interpreters under /root are
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(SYSTEM_PYTHON)
    try:
        code, out = edge_device(capsys, *setup, "--python", str(private / "python3"))
        error = out["devices"][0]["error"]
        assert code == exit_code("setup-failed") == 87, out
        assert f"the service user {user} cannot run {private / 'python3'}" in error and "--python" in error
        assert not (remote / "venv").exists()  # stopped before making a venv the service could not start

        code, out = edge_device(capsys, *setup, "--python", SYSTEM_PYTHON)
        row = out["devices"][0]
        assert code == 0 and row["running"], out
        assert row["broker"]["check"] == "unreachable"  # the check ran as the user and could read its login
        uid = pwd.getpwnam(user).pw_uid  # created by setup
        creds = remote / "credentials.env"
        assert (creds.stat().st_uid, stat.S_IMODE(creds.stat().st_mode)) == (uid, 0o600)
        assert "EDGE_AGENT_MQTT_USERNAME=cam-user\n" in creds.read_text()
        assert all(p.stat().st_uid == uid for p in (remote / "agent").rglob("*"))
        pid = (remote / "agent.pid").read_text().strip()
        assert f"Uid:\t{uid}\t" in Path(f"/proc/{pid}/status").read_text()  # the service runs as the user
        assert f"User={user}" in (root / "units" / "edge-agent.service").read_text()

        code, out = edge_device(capsys, "flash", str(x86_bundle), *args, "--runs", "5")
        assert code == 0 and out["devices"][0]["active_slot"] in ("a", "b"), out
        assert all(p.stat().st_uid == uid for p in (remote / "agent").rglob("*"))  # flash kept one owner
    finally:
        pid_file = remote / "agent.pid"
        if pid_file.exists():
            pid = pid_file.read_text().strip()
            subprocess.run(["kill", pid], check=False)
            for _ in range(100):  # userdel refuses a user that still runs a process
                if not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                    break
                time.sleep(0.1)
        subprocess.run(["userdel", user], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
