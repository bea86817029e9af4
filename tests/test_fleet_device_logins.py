"""An operator takes a device's broker login away (`devices revoke`) or changes it (`devices login --rotate`).

A stolen or retired Raspberry Pi kept its broker access for ever, and a leaked password could not be changed.
Here a real `edge-fleet serve` server (its embedded Mosquitto) picks up the CLI's change to logins.json, and
real paho clients see the broker drop the device's connection and refuse its old password.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.errors import exit_code
from edge_fleet.broker import find_mosquitto
from edge_fleet.cli import main as fleet_main
from edge_fleet.registry import open_registry
from edge_fleet.server import FleetServer
from .ota_helpers import wait_for

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")


class Device:
    """A raw MQTT client logged in as a device: the broker's CONNACK reason, and whether it was dropped since."""

    def __init__(self, url: str, user: str, password: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.reasons: list[mqtt.ReasonCode] = []
        self.dropped = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.reasons.append(rc)
        self.client.on_disconnect = lambda *_a: self.dropped.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        wait_for(lambda: self.reasons, what=f"{user}'s CONNACK")

    @property
    def accepted(self) -> bool:
        return not self.reasons[0].is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(tmp_path):
    """`edge-fleet serve`'s server on HOME=tmp_path with its embedded Mosquitto; the CLI options for that HOME."""
    reg = open_registry(tmp_path / "fleet.db", store_dir=tmp_path / "bundles")
    server = FleetServer(reg, None, embedded="mosquitto", broker_dir=tmp_path / "broker", tick=0.05).start()
    yield server, ["--home", str(tmp_path)]
    server.stop()
    reg.close()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = fleet_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _login(capsys, home: list[str], device_id: str, *more: str) -> dict:
    code, out, err = _cli(capsys, "devices", "login", device_id, "--json", *more, *home)
    assert code == 0, err
    return json.loads(out)


def _logged_in(server: FleetServer, user: str, password: str) -> Device:
    """A device once the running server gave the broker its login (picked up at the server's next tick)."""
    def attempt() -> Device | None:
        d = Device(server.url, user, password)
        if d.accepted:
            return d
        d.close()
        return None
    return wait_for(attempt, what=f"{user}'s login to work", interval=0.1)


def _refused(server: FleetServer, user: str, password: str) -> str:
    d = Device(server.url, user, password)
    d.close()
    return str(d.reasons[0])


def test_a_revoked_device_is_disconnected_and_refused_and_its_history_stays(fleet, capsys):
    server, home = fleet
    login = _login(capsys, home, "pi-stolen")
    assert _cli(capsys, "devices", "group", "pi-stolen", "yard", *home)[0] == 0  # a registry row with a history
    device = _logged_in(server, "pi-stolen", login["password"])
    try:
        assert device.client.publish("edgekit/devices/pi-stolen/telemetry", b"{}", qos=1).rc == mqtt.MQTT_ERR_SUCCESS
        code, out, err = _cli(capsys, "devices", "revoke", "pi-stolen", *home)
        assert code == 0 and "pi-stolen: broker login revoked" in out, err
        # Mosquitto checks connected clients against the reloaded password file: the thief's session ends
        assert device.dropped.wait(30), "the revoked device stayed connected"
    finally:
        device.close()
    assert _refused(server, "pi-stolen", login["password"]) == "Not authorized"
    code, out, _ = _cli(capsys, "devices", "list", "--json", *home)
    assert code == 0 and [(d["id"], d["group"], d["broker_login"]) for d in json.loads(out)] == \
        [("pi-stolen", "yard", "revoked")]
    assert "(broker login revoked)" in _cli(capsys, "devices", "list", *home)[1]
    code, out, _ = _cli(capsys, "audit", "--json", *home)
    assert [(a["action"], a["target"], a["outcome"]) for a in json.loads(out)][0] == ("login-revoke", "pi-stolen", "ok")
    again = _login(capsys, home, "pi-stolen")  # the operator lets it back in: a new password, not the old one
    assert again["password"] != login["password"]
    _logged_in(server, "pi-stolen", again["password"]).close()


def test_a_rotated_password_replaces_the_old_one(fleet, capsys):
    server, home = fleet
    old = _login(capsys, home, "pi-leaked")
    device = _logged_in(server, "pi-leaked", old["password"])
    try:
        new = _login(capsys, home, "pi-leaked", "--rotate")
        assert new.keys() == old.keys() and new["password"] != old["password"]  # what `edge-device setup` reads
        assert {k: v for k, v in new.items() if k != "password"} == {k: v for k, v in old.items() if k != "password"}
        assert device.dropped.wait(30), "a client with the leaked password stayed connected"
    finally:
        device.close()
    _logged_in(server, "pi-leaked", new["password"]).close()
    assert _refused(server, "pi-leaked", old["password"]) == "Not authorized"
    assert _login(capsys, home, "pi-leaked")["password"] == new["password"]  # shown again as before: the new one
    code, out, _ = _cli(capsys, "audit", "--json", *home)
    assert [(a["action"], a["target"], a["outcome"]) for a in json.loads(out)][0] == ("login-rotate", "pi-leaked", "ok")


@pytest.mark.parametrize("argv", [["devices", "revoke", "nobody"], ["devices", "login", "nobody", "--rotate"]])
def test_an_unknown_device_is_one_line_not_found(argv, tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    code, _, err = _cli(capsys, *argv, *home)
    assert code == exit_code("not-found") and err.strip().splitlines() == \
        ["edge-fleet: error: device 'nobody' has no broker login (no logins in " + str(tmp_path / "broker") + ")"]
    assert not (tmp_path / "broker").exists()  # a refused change creates no fleet logins
    _login(capsys, home, "other")
    code, _, err = _cli(capsys, *argv, *home)
    assert code == exit_code("not-found") and len(err.strip().splitlines()) == 1 and "'nobody'" in err
    assert _cli(capsys, *argv[:2], "bad/id", *argv[3:], *home)[0] == exit_code("usage")


def test_a_revoked_device_says_so_and_a_remote_fleet_cannot_change_logins(tmp_path, capsys):
    home = ["--home", str(tmp_path)]
    _login(capsys, home, "pi-old")
    assert _cli(capsys, "devices", "revoke", "pi-old", *home)[0] == 0
    code, _, err = _cli(capsys, "devices", "revoke", "pi-old", *home)
    assert code == exit_code("not-found") and "has no broker login (revoked 20" in err
    logins = json.loads(Path(tmp_path / "broker" / "logins.json").read_text())
    assert "pi-old" not in logins["devices"] and "pi-old" in logins["revoked"]
    for argv in (["devices", "revoke", "pi-old"], ["devices", "login", "pi-old", "--rotate"]):
        code, _, err = _cli(capsys, *argv, "--api", "http://127.0.0.1:9", "--token", "t", *home)
        assert code != 0 and f"run `edge-fleet devices {argv[1]}` on the fleet host" in err


def test_the_server_gives_a_device_revoked_since_its_last_tick_a_new_login(tmp_path, capsys):
    """FleetServer.add_device worked on its copy of logins.json from the last tick: it handed out the revoked
    password again, which the broker (reloaded from the file) refused."""
    reg = open_registry(tmp_path / "fleet.db", store_dir=tmp_path / "bundles")
    server = FleetServer(reg, None, embedded="mosquitto", broker_dir=tmp_path / "broker", tick=3600).start()
    try:
        _, first = server.add_device("pi-back")
        assert _cli(capsys, "devices", "revoke", "pi-back", "--home", str(tmp_path))[0] == 0
        _, second = server.add_device("pi-back")
        assert second != first
        _logged_in(server, "pi-back", second).close()
    finally:
        server.stop()
        reg.close()
