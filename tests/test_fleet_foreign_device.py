"""A device that is not edgekit's agent (a plain paho client with its own login) sends the fleet odd numbers.

Python's json.loads, like many devices' JSON writers, takes NaN, Infinity and integers with hundreds of digits;
JSON has no NaN/Infinity and no registry column holds such an integer. The fleet must drop such a message as
malformed (one warning) and keep everything else: not store NaN (which `edge-fleet status --json` then printed
as invalid JSON; a report's free-form shadow/drift figures are kept and printed as null), and not take an
OverflowError for the registry being away (which re-read every device's retained report; on PostgreSQL a NUL
in a report, which its text columns refuse, did the same).
"""

from __future__ import annotations

import json
import logging

import pytest

from edge_fleet.cli import main as fleet_main
from edge_fleet.registry import open_registry
from edge_fleet.server import FleetServer
from .ota_helpers import login_client, wait_for

HUGE = "1" + "0" * 400  # json.loads makes it an int; float() overflows, SQLite's INTEGER cannot hold it


def _strict(text: str) -> object:
    """JSON as any other language's parser reads it: NaN/Infinity refused."""
    def refuse(word: str) -> None:
        raise ValueError(f"{word} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _ignored(caplog) -> int:
    return sum("ignored message" in r.getMessage() for r in caplog.records)


def _reported(dev: str, updated_at: str = "1", extra: str = "", phase: str = "idle") -> bytes:
    """A reported state; a phase of its own each, so the fleet's inbox never merges one into the next."""
    return (f'{{"device_id":"{dev}","phase":"{phase}","profile":"raspberry-pi-4","agent_version":"foreign",'
            f'"updated_at":{updated_at}{extra}}}').encode()


@pytest.fixture
def fleet(registry_location, tmp_path):
    """A fleet server with its embedded broker, on SQLite and on PostgreSQL: (server, registry, CLI options)."""
    reg = open_registry(registry_location, store_dir=tmp_path / "bundles")
    server = FleetServer(reg, None, embedded="mosquitto", tick=0.05).start()
    yield server, registry_location, ["--home", str(tmp_path), "--db", registry_location]
    server.stop()
    reg.close()


def test_odd_numbers_from_a_device_are_dropped_as_malformed_and_status_json_stays_json(fleet, caplog, capsys):
    server, location, where = fleet
    user, password = server.add_device("foreign-1")
    client = wait_for(lambda: (c := login_client(server.url, user, password, user))[2] and c,
                      what="the device's login to work", interval=0.2)[0]
    topic = f"edgekit/devices/{user}"
    caplog.set_level(logging.WARNING, logger="edge_fleet.server")
    try:
        with open_registry(location) as reg:
            stored = lambda what: (lambda: (d := reg.device(user)) is not None and what(d))  # noqa: E731
            for kind, payload, handled in [
                ("reported", _reported(user, HUGE, phase="downloading"), None),  # retained, as an agent's reports
                ("telemetry", b'{"inferences":5,"errors":0,"latency":{"p50":NaN,"p99":Infinity}}', None),
                ("telemetry", f'{{"inferences":{HUGE},"errors":0}}'.encode(), None),
                ("presence", f'{{"state":"online","at":{HUGE}}}'.encode(), None),
                # a NUL: PostgreSQL's text columns refuse it (a DataError, taken for the registry being away); a
                # failed device's report must not be lost for it: kept, the NUL shown as U+FFFD
                ("reported", _reported(user, extra=',"last_error":"bad\\u0000byte"', phase="failed"),
                 stored(lambda d: d.last_error == "bad\ufffdbyte")),
                # the shadow and drift figures are free-form: kept, and printed as JSON can say them (null)
                ("reported", _reported(user, extra=',"shadow":{"verdict":"failed","agreement":NaN},'
                                                 '"drift":{"state":"drifting","psi":{"x":Infinity}}'),
                 stored(lambda d: d.phase == "idle" and d.agent_version == "foreign")),
            ]:
                before = _ignored(caplog)
                client.publish(f"{topic}/{kind}", payload, qos=1, retain=kind == "reported").wait_for_publish(10)
                # one at a time: the fleet's inbox merges queued telemetry and reports (the newest wins)
                wait_for(handled or (lambda: _ignored(caplog) > before), what=f"{kind} handled")
            client.publish(f"{topic}/telemetry", b'{"inferences":7,"errors":1,"latency":{"p50":2.5,"p99":4.0}}',
                           qos=1).wait_for_publish(10)
            wait_for(stored(lambda d: d.inferences == 7), what="the valid telemetry stored")
    finally:
        client.loop_stop()
        client.disconnect()
    assert fleet_main(["status", "--json", *where]) == 0
    row = next(d for d in _strict(capsys.readouterr().out)["devices"] if d["id"] == user)
    assert (row["latency_p50_ms"], row["latency_p99_ms"], row["inferences"]) == (2.5, 4.0, 7)
    assert row["shadow"] == {"verdict": "failed", "agreement": None} and row["drift"]["psi"] == {"x": None}
    warnings = [r.getMessage() for r in caplog.records]
    assert _ignored(caplog) == 4, warnings  # the 4 odd numbers, one line each
    assert not [w for w in warnings if "failed to handle message" in w], warnings


def test_escape_sequences_from_a_device_never_reach_the_operators_terminal(fleet, capsys):
    """A device's report is free text (its error, model name, profile): ESC/CR in it recoloured or overwrote
    `edge-fleet status`, a line break in it made a line of its own; a group name could carry them too."""
    server, location, where = fleet
    user, password = server.add_device("foreign-2")
    client = wait_for(lambda: (c := login_client(server.url, user, password, user))[2] and c,
                      what="the device's login to work", interval=0.2)[0]
    evil = "\\u001b[2J\\u001b[31mowned\\r\\nfake-device  succeeded"
    report = (f'{{"device_id":"{user}","phase":"failed","profile":"pi\\u001b[8m","agent_version":"x",'
              f'"updated_at":1,"last_error":"{evil}","current":{{"name":"m\\u001b]0;t\\u0007","version":1,'
              f'"sha256":"{"a" * 64}"}}}}').encode()
    try:
        client.publish(f"edgekit/devices/{user}/reported", report, qos=1, retain=True).wait_for_publish(10)
        with open_registry(location) as reg:
            wait_for(lambda: (d := reg.device(user)) is not None and d.phase == "failed", what="the report stored")
    finally:
        client.loop_stop()
        client.disconnect()
    capsys.readouterr()
    assert fleet_main(["status", *where]) == 0
    out = capsys.readouterr().out
    assert not [c for c in out if c != "\n" and (ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0)], repr(out)
    assert out.count("\n") == 3 and "\\x1b[31mowned\\x0d\\nfake-device" in out  # header, device, its error
    assert fleet_main(["devices", "group", user, "lobby\x1b[8m", *where]) == 2  # a bad option value: usage
    assert "printable" in capsys.readouterr().err
