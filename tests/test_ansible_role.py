"""deploy/ansible: the same steps as `edge-device setup` + `flash` as an Ansible role, run by a real
ansible-playbook (OpenSSH client) against a real sshd "device": agent installed from the wheelhouse,
profile detected by `edge-agent doctor`, unit rendered by `edge-device unit`, bundle flashed and benched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .device_fixtures import x86_bundle  # noqa: F401 - fixture
from .sshd_helpers import start_sshd

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(900)]
BIN = Path(sys.executable).parent


def test_ansible_role_provisions_and_flashes(x86_bundle, digits, tmp_path):  # noqa: F811
    server = start_sshd(tmp_path / "sshd")
    root = tmp_path / "device"
    inv = tmp_path / "inventory.ini"
    inv.write_text(
        "[edge_devices]\n"
        f"cam-1 ansible_host=127.0.0.1 ansible_port={server.port} ansible_user=root "
        f"ansible_ssh_private_key_file={server.identity} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={server.known_hosts} -o StrictHostKeyChecking=yes'\n")
    extra = {"edgekit_root": str(root), "edgekit_broker": "mqtt://127.0.0.1:1", "edgekit_trust_keys": [str(digits.pub)],
             "edgekit_service_user": "root", "edgekit_unit_dir": str(tmp_path / "units"),
             "edgekit_bundle": str(x86_bundle), "edgekit_bench_runs": 5,
             "edgekit_device_cli": str(BIN / "edge-device"), "edgekit_mqtt_password": "s3cret-login"}
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",  # no ControlPersist master left running after the test
           "EDGEKIT_CACHE": os.environ.get("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit")),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), str(REPO / "deploy" / "ansible" / "playbook.yml"),
                            "-e", json.dumps(extra)], capture_output=True, text=True, env=env, timeout=840)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "failed=0" in r.stdout
        assert (root / "agent" / "profile").read_text().strip() == "x86-64-cpu"  # doctor on the device
        unit = (tmp_path / "units" / "edge-agent.service").read_text()
        assert "ProtectSystem=strict" in unit and f"--device-id cam-1" in unit
        creds = root / "credentials.env"
        assert f"--credentials {creds}" in unit and "s3cret-login" not in unit and "s3cret-login" not in r.stdout
        assert creds.stat().st_mode & 0o777 == 0o600 and "EDGE_AGENT_MQTT_USERNAME=cam-1\n" in creds.read_text()
        bench = json.loads((root / "last-bench.json").read_text())
        assert bench["latency"]["p50_ms"] > 0
        status = subprocess.run([str(root / "venv" / "bin" / "edge-agent"), "--home", str(root / "agent"), "status",
                                 "--json"], capture_output=True, text=True, check=True)
        assert json.loads(status.stdout)["model"] == "digits"
        pid = int((root / "agent.pid").read_text())
        os.kill(pid, 0)  # the agent runs
    finally:
        pid_file = root / "agent.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
        server.stop()
