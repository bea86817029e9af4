"""`edge-device` as an operator types it on a bad day, against a real OpenSSH server (no setup needed):
target spellings, inventory mistakes, each one line with its own exit code and no Python message."""

from __future__ import annotations

import pytest

from edge_agent.errors import exit_code

from .device_fixtures import edge_device, sshd  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(300)
NOT_SET_UP = exit_code("not-set-up")


def _status(capsys, server, target: str, tmp_path) -> tuple[int, dict]:
    return edge_device(capsys, "status", target, *server.cli_args(), "--remote-dir", str(tmp_path / "none"))


def test_a_target_without_a_user_logs_in_as_the_local_user(sshd, capsys, tmp_path):  # noqa: F811
    code, out = _status(capsys, sshd, f"127.0.0.1:{sshd.port}", tmp_path)  # the tests run as root, sshd's user
    assert code == NOT_SET_UP, out
