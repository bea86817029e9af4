"""`edge-fleet serve` stopped and started again on the same HOME, as an operator restarts it (an upgrade, a reboot).

Devices were given the embedded broker's URL (`serving on mqtt://127.0.0.1:PORT`); without --listen the broker
took a new free port at each start, so after a restart no device could reach the fleet again (and a rollout
"continued where it stopped" reached nobody). The broker takes its previous port again when it is free.
"""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt

from edge_fleet.broker.logins import BrokerLogins
from .fleet_http_helpers import FleetProcess
from .ota_helpers import wait_for


def test_a_restarted_fleet_keeps_its_broker_address_and_a_device_reconnects_by_itself(tmp_path):
    home = tmp_path / "fleet"
    first = FleetProcess(home)
    try:
        url = first.broker
        password = BrokerLogins.load_or_create(home / "broker")[0].add_device("cam-1")
        host, port = url.removeprefix("mqtt://").split(":")
        connects: list[bool] = []
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-1")  # paho reconnects on its own
        device.username_pw_set("cam-1", password)
        device.reconnect_delay_set(0.1, 0.5)
        device.on_connect = lambda _c, _u, _f, rc, _p: connects.append(not rc.is_failure)
        device.connect_async(host, int(port))
        device.loop_start()
        wait_for(lambda: True in connects, what="the device's first connection")
    finally:
        assert first.stop() == 0
    try:
        second = FleetProcess(home)
        try:
            assert second.broker == url
            wait_for(lambda: connects.count(True) >= 2, what="the device to reconnect to the restarted fleet")
        finally:
            assert second.stop() == 0
    finally:
        device.loop_stop()


def test_a_fleet_whose_last_port_is_taken_starts_on_another(tmp_path):
    home = tmp_path / "fleet"
    first = FleetProcess(home)
    url = first.broker
    assert first.stop() == 0
    host, port = url.removeprefix("mqtt://").split(":")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the first fleet's connections linger
        squatter.bind((host, int(port)))
        squatter.listen()
        second = FleetProcess(home)
        try:
            assert second.broker != url
        finally:
            assert second.stop() == 0


def test_a_second_serve_on_the_same_home_is_refused_and_leaves_the_first_alone(tmp_path):
    """It started a second embedded broker on the first one's config, persistence and logins (another port the
    devices knew nothing of) and rewrote the files the running one uses."""
    import os
    import subprocess
    import sys

    from edge_fleet.errors import exit_code
    from .ota_helpers import REPO

    home = tmp_path / "fleet"
    first = FleetProcess(home)
    try:
        conf = (home / "broker" / "mosquitto.conf").read_text()
        second = subprocess.run([sys.executable, "-m", "edge_fleet.cli", "serve", "--home", str(home)],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert second.returncode == exit_code("broker-start-failed")
        assert f"another edge-fleet serve (pid {first.proc.pid}) runs the embedded broker of {home}" in second.stderr
        assert (home / "broker" / "mosquitto.conf").read_text() == conf
        assert first.proc.poll() is None
    finally:
        assert first.stop() == 0
    third = FleetProcess(home)  # the lock goes with the process that held it
    assert third.stop() == 0


def test_a_damaged_port_file_gives_a_free_port_not_port_0(tmp_path):
    """Port 0 read back from a damaged file would bind "any port", i.e. a new one at every start."""
    from edge_fleet.broker.start import LAST_PORT, _last_or_free_port

    for text in ("0\n", "70000\n", "-1\n", "x\n"):
        (tmp_path / LAST_PORT).write_text(text)
        assert 1024 <= _last_or_free_port(tmp_path, "127.0.0.1") <= 65535, text
