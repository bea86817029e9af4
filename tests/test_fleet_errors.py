"""The fleet's exit codes come from one table; every failure is one line and its code, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.bundle import BundleError
from edge_fleet import errors
from edge_fleet.broker import amqtt_available, find_mosquitto
from edge_fleet.cli import build_parser
from edge_agent.errors import EXIT_CODES
from edge_fleet.errors import FleetError

REPO = Path(__file__).resolve().parents[1]


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_every_fleet_error_uses_a_registered_code():
    for cls in [FleetError, *_all_subclasses(FleetError)]:
        assert cls.exit_code == errors.exit_code(cls.code_name), cls
    with pytest.raises(KeyError):
        type("Unregistered", (FleetError,), {"code_name": "no_such_code"})


def test_help_lists_every_fleet_code_and_the_bundle_codes():
    epilog = build_parser().epilog or ""
    for e in EXIT_CODES:
        if "edge-fleet" in e.clis:
            assert f"{e.code:>3}  {e.meaning}" in epilog
    for c in [BundleError, *_all_subclasses(BundleError)]:
        assert f"{c.exit_code:>3}  " in epilog


def _fleet(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge_fleet.cli", *args, "--home", str(home)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_serve_on_a_port_in_use_is_one_line_and_its_code(tmp_path, kind):
    if kind == "mosquitto" and find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure_mosquitto.sh")
    if kind == "amqtt" and not amqtt_available():
        pytest.fail("amqtt is not installed")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = _fleet("serve", "--embedded", kind, "--listen", f"127.0.0.1:{port}", home=tmp_path)
    assert proc.returncode == errors.exit_code("broker-start-failed") == 61, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edge-fleet: error: ") and str(port) in lines[0]
    assert "did not start" in lines[0] or "failed to start" in lines[0]
    if kind == "mosquitto":
        assert "Address already in use" in lines[0]
    assert proc.stdout == ""


def test_serve_against_an_unreachable_broker_is_one_line_and_its_code(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _fleet("serve", "--broker", f"mqtt://127.0.0.1:{port}", home=tmp_path)
    assert proc.returncode == errors.exit_code("connection-failed") == 8, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "cannot reach MQTT broker" in proc.stderr


@pytest.mark.parametrize("listen", ["bad:port:x", "127.0.0.1:99999", "host:", "[::1]:http"])
def test_serve_refuses_a_bad_listen_address_as_usage(tmp_path, capsys, listen):
    from edge_fleet.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["serve", "--listen", listen, "--home", str(tmp_path)])
    assert caught.value.code == errors.exit_code("usage")
    assert "--listen" in capsys.readouterr().err
