"""Fixtures for `edge-device` tests: a real sshd "device", provisioned once per module from nothing.

The wheelhouse is cached in REPO/.cache/edgekit (EDGEKIT_CACHE) so reruns do not download again.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, convert_args
from .sshd_helpers import SshServer, start_sshd


@dataclass
class Device:
    server: SshServer
    remote_dir: Path
    unit_dir: Path
    setup_result: dict

    def args(self, *extra: str) -> list[str]:
        return [self.server.target, *self.server.cli_args(), "--remote-dir", str(self.remote_dir), *extra]

    @property
    def home(self) -> Path:
        return self.remote_dir / "agent"


def edge_device(capsys, *argv: str) -> tuple[int, dict]:
    """Run `edge-device ... --json` in process; (exit code, parsed JSON)."""
    from edge_device.cli import main

    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture(scope="module")
def x86_bundle(digits, tmp_path_factory) -> Path:
    """The digits model converted for the x86-64-cpu profile (what the loopback "device" detects as)."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("x86") / "digits-x86.edgebundle"
    assert main(convert_args(digits, out, "x86-64-cpu")) == 0
    return out


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def device(sshd, digits, tmp_path_factory):
    """The sshd device set up from nothing (`edge-device setup`), its agent service stopped at the end."""
    from edge_device.cli import main

    root = tmp_path_factory.mktemp("device")
    os.environ.setdefault("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit"))
    dev = Device(sshd, root / "opt-edgekit", root / "systemd", {})
    argv = ["setup", *dev.args(), "--unit-dir", str(dev.unit_dir), "--broker", "mqtt://127.0.0.1:1",
            "--trust", str(digits.pub), "--service-user", "root", "--json"]
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(argv)
    assert code == 0, buf.getvalue()
    dev.setup_result = json.loads(buf.getvalue())["devices"][0]
    yield dev
    pid = dev.remote_dir / "agent.pid"
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], check=False)
