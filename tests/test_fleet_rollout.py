"""Staged rollouts through the fleet server with simulated devices on real brokers.

The devices are tests/fleet_sim.py peers: real paho clients that download bundles block by
block through the fleet's block server and report states; some are told to fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.bundle import TrustStore, sha256_file
from edge_fleet.cli import main as fleet_main
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import Registry, open_registry
from edge_fleet.broker.logins import BrokerLogins
from edge_fleet.server import FleetServer
from .fleet_sim import SimDevice, ref_of
from .ota_helpers import wait_login_works, with_login

REPO = Path(__file__).resolve().parents[1]
WAIT = 30.0


def wait_until(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fleet(tmp_path, int8_bundle, int8_v2_bundle, digits):
    """A fleet server with its EMBEDDED broker (managed Mosquitto), v1 and v2 published."""
    reg = open_registry(tmp_path / "fleet.db")
    trust = TrustStore.from_paths([digits.pub])
    publish_bundle(reg, int8_bundle, trust)
    publish_bundle(reg, int8_v2_bundle, trust)
    server = FleetServer(reg, None, embedded="mosquitto", tick=0.05).start()
    sims: list[SimDevice] = []

    def sim(device_id: str, **kw) -> SimDevice:
        kw.setdefault("current", ref_of(int8_bundle))
        s = SimDevice(server.broker.host, server.broker.port, device_id, login=server.add_device(device_id), **kw).start()
        sims.append(s)
        return s

    yield server, reg, sim
    for s in sims:
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - killed sims have no connection
            pass
    server.stop()
    reg.close()


def known(reg: Registry, *ids: str) -> bool:
    return all((d := reg.device(i)) is not None and d.profile for i in ids)


def test_staged_rollout_updates_stage_by_stage_and_skips_other_profiles(fleet, int8_bundle, int8_v2_bundle, capsys):
    server, reg, sim = fleet
    assert server.broker.kind == "mosquitto" and server.url == server.broker.url
    ids = [f"pi-{i}" for i in range(4)]
    sims = [sim(i) for i in ids]
    jetson = sim("jetson-0", profile="jetson-orin-nano", current=None)
    wait_until(lambda: known(reg, *ids, "jetson-0"), what="devices to report")
    db = str(reg.db_path)
    rc = fleet_main(["deploy", "digits:2", "--devices", ",".join([*ids, "jetson-0", "ghost"]), "--stages", "25,50,100",
                     "--stage-timeout", "30", "--wait", "--wait-timeout", "60", "--db", db, "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads(out)
    assert r["status"] == "succeeded" and r["stages"] == [1, 2, 4]
    by_id = {d["device_id"]: d for d in r["devices"]}
    assert by_id["jetson-0"]["status"] == "skipped" and "profile jetson-orin-nano" in by_id["jetson-0"]["reason"]
    assert by_id["ghost"]["status"] == "skipped" and "never reported" in by_id["ghost"]["reason"]
    assert jetson.history == []  # never got a desired state
    v2 = sha256_file(int8_v2_bundle)[1]
    for s in sims:
        assert s.current.sha256 == v2 and s.current.version == 2
        assert s.files[v2] == int8_v2_bundle.read_bytes()  # downloaded through the block protocol
        assert by_id[s.id]["status"] == "succeeded" and by_id[s.id]["previous_sha"] == sha256_file(int8_bundle)[1]
    # stage k+1 was only sent after every device of stage k had finished
    stages: dict[int, list[dict]] = {}
    for d in r["devices"]:
        stages.setdefault(d["stage"], []).append(d)
    assert [len(stages[k]) for k in (0, 1, 2)] == [1, 1, 2]
    for k in (1, 2):
        assert min(d["sent_at"] for d in stages[k]) >= max(d["done_at"] for d in stages[k - 1])

    # status JSON reflects what the devices reported (and their telemetry)
    for n, s in enumerate(sims):
        s.send_telemetry(p50=1.5 + n, p99=4.0 + n)
    wait_until(lambda: all((d := reg.device(i)) is not None and d.latency for i in ids), what="telemetry")
    assert fleet_main(["status", "--json", "--db", db]) == 0
    status = {d["id"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    for n, i in enumerate(ids):
        d = status[i]
        assert (d["model"], d["version"], d["phase"], d["presence"]) == ("digits", 2, "succeeded", "online")
        assert d["latency_p50_ms"] == 1.5 + n and d["latency_p99_ms"] == 4.0 + n
        assert d["last_seen"] > time.time() - 60
    assert status["jetson-0"]["version"] is None and status["jetson-0"]["profile"] == "jetson-orin-nano"

    # presence: a device whose connection drops (no DISCONNECT) is marked offline by its last will
    sims[0].kill()
    wait_until(lambda: (d := reg.device("pi-0")) is not None and d.presence == "offline", what="last will")
    assert fleet_main(["status", "--json", "--db", db]) == 0
    status = {d["id"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    assert status["pi-0"]["presence"] == "offline" and status["pi-1"]["presence"] == "online"


def test_rollout_halts_on_failures_and_rolls_back_switched_devices(fleet, int8_bundle, int8_v2_bundle, capsys):
    server, reg, sim = fleet
    v1, v2 = sha256_file(int8_bundle)[1], sha256_file(int8_v2_bundle)[1]
    ok = sim("a-ok")
    bad = sim("b-bad", fail="health check failed: self-test outputs differ")
    rest = [sim(f"c-{i}") for i in range(3)]
    wait_until(lambda: known(reg, "a-ok", "b-bad", "c-0", "c-1", "c-2"), what="devices to report")
    rc = fleet_main(["deploy", "digits:2", "--devices", "a-ok,b-bad,c-0,c-1,c-2", "--stages", "20,40,100",
                     "--max-failures", "0", "--wait", "--wait-timeout", "60", "--db", str(reg.db_path), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 7  # RolloutHalted
    assert r["status"] == "halted" and "1 device(s) failed" in r["reason"]
    by_id = {d["device_id"]: d for d in r["devices"]}
    # `--wait` returned only once the switched device reported its previous bundle again
    assert by_id["a-ok"]["status"] == "rolled_back" and "confirmed by the device" in by_id["a-ok"]["reason"]
    assert reg.device("a-ok").current.sha256 == v1
    assert by_id["b-bad"]["status"] == "failed" and "self-test outputs differ" in by_id["b-bad"]["reason"]
    assert all(by_id[s.id]["status"] == "not_started" for s in rest)
    assert all(s.history == [] for s in rest)  # later stages never received the bundle
    # the switched device was sent its previous bundle (allow_downgrade) and went back to it
    assert ok.wait_for(lambda s: s.current.sha256 == v1 and s.phase == "succeeded", timeout=WAIT)
    assert v2 in [sha for _phase, sha in ok.history]  # it really had switched to v2 first
    assert bad.current.sha256 == v1
    wait_until(lambda: reg.device("a-ok").current_sha == v1, what="rollback report")


def test_halt_waits_for_roll_back_and_names_a_device_that_never_confirms(fleet, int8_bundle, int8_v2_bundle, capsys):
    server, reg, sim = fleet
    gone = sim("a-gone")  # switches to v2, then drops off the network before the halt
    sim("b-quiet", silent=True)  # never answers: times out, which halts the rollout
    wait_until(lambda: known(reg, "a-gone", "b-quiet"), what="devices to report")
    assert fleet_main(["deploy", "digits:2", "--devices", "a-gone,b-quiet", "--stages", "50,100", "--stage-timeout", "3",
                       "--max-failures", "0", "--db", str(reg.db_path), "--json"]) == 0
    rid = json.loads(capsys.readouterr().out)["id"]

    def device_status(dev: str) -> str:
        return reg.rollout(rid).target(dev).status

    wait_until(lambda: device_status("a-gone") == "succeeded", what="a-gone to switch")
    gone.kill()
    # halted by b-quiet's timeout; a-gone cannot confirm its roll-back: the rollout waits for it, then says so
    wait_until(lambda: reg.rollout(rid).status == "halting", what="halting")
    assert device_status("a-gone") == "rolling_back"
    r = wait_until(lambda: (x := reg.rollout(rid)) and x.status == "halted" and x, what="halted")
    a = r.target("a-gone")
    assert a.status == "rollback_timeout" and "did not report it within 3s" in a.reason
    assert "desired reset to previous digits:1" in a.reason
    assert r.target("b-quiet").status == "timeout"


def test_device_that_undoes_the_update_after_succeeding_fails_the_rollout(fleet, int8_bundle, int8_v2_bundle, capsys):
    """The agent's probation can roll a model back after it reported success. With --stage-soak the next stage
    waits, so the late roll-back halts the rollout before the next stage gets the bundle."""
    server, reg, sim = fleet
    sim("a-undo", undo_after_s=1.0)  # succeeds, then reports rolled_back for this deployment
    later = sim("b-later")
    wait_until(lambda: known(reg, "a-undo", "b-later"), what="devices to report")
    rc = fleet_main(["deploy", "digits:2", "--devices", "a-undo,b-later", "--stages", "50,100", "--stage-soak", "5",
                     "--max-failures", "0", "--wait", "--wait-timeout", "60", "--db", str(reg.db_path), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 7 and r["status"] == "halted" and "1 device(s) failed" in r["reason"] and r["stage_soak"] == 5
    by_id = {d["device_id"]: d for d in r["devices"]}
    assert by_id["a-undo"]["status"] == "failed" and "device rolled back after the switch" in by_id["a-undo"]["reason"]
    assert "inferences on live inputs failed" in by_id["a-undo"]["reason"]
    assert by_id["b-later"]["status"] == "not_started" and later.history == []  # the soak kept stage 2 back
    # without a soak the same rollout moves on as soon as stage 1 reports success
    sim("c-undo", undo_after_s=30.0)
    sim("d-ok")
    wait_until(lambda: known(reg, "c-undo", "d-ok"), what="devices to report")
    rc = fleet_main(["deploy", "digits:2", "--devices", "c-undo,d-ok", "--stages", "50,100", "--wait",
                     "--wait-timeout", "60", "--db", str(reg.db_path), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["status"] == "succeeded"


def test_failures_within_threshold_and_timeouts(fleet, int8_v2_bundle, capsys):
    server, reg, sim = fleet
    sim("d-0")
    sim("d-1", fail="verify failed: not enough disk space")
    sim("d-2")
    wait_until(lambda: known(reg, "d-0", "d-1", "d-2"), what="devices to report")
    db = str(reg.db_path)
    rc = fleet_main(["deploy", "digits:2", "--devices", "d-0,d-1,d-2", "--stages", "100", "--max-failures", "1",
                     "--wait", "--wait-timeout", "60", "--db", db, "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["status"] == "succeeded" and "1 failed" in r["reason"]
    assert sorted(d["status"] for d in r["devices"]) == ["failed", "succeeded", "succeeded"]
    # a device that never answers times out, and a timeout counts as a failure
    sim("e-0", silent=True)
    wait_until(lambda: known(reg, "e-0"), what="device to report")
    rc = fleet_main(["deploy", "digits:2", "--devices", "e-0", "--stage-timeout", "1", "--wait", "--wait-timeout", "60",
                     "--db", db, "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 7 and r["status"] == "halted"
    d = r["devices"][0]
    assert d["status"] == "timeout" and "no success within 1s" in d["reason"]
    assert "desired reset to previous digits:1" in d["reason"]  # so it cannot switch later


def test_serve_cli_with_embedded_amqtt_broker_happy_path(tmp_path, int8_bundle, int8_v2_bundle, digits, capsys):
    """`edge-fleet serve` as a real process on the pure-Python embedded broker: publish, deploy, converge."""
    home = tmp_path / "fleet"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_fleet.cli", "serve", "--embedded", "amqtt", "--home", str(home),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    sims: list[SimDevice] = []
    try:
        info = json.loads(proc.stdout.readline())
        assert info["embedded"] == "amqtt" and info["broker"].startswith("mqtt://127.0.0.1:")
        port = int(info["broker"].rsplit(":", 1)[1])
        for path in (int8_bundle, int8_v2_bundle):
            assert fleet_main(["publish", str(path), "--trust", str(digits.pub), "--home", str(home)]) == 0
        logins, _ = BrokerLogins.load_or_create(home / "broker")  # as `edge-fleet devices login ID` does
        ids = [f"amq-{i}" for i in range(3)]
        for i in ids:
            wait_login_works(with_login(info["broker"], i, logins.add_device(i)))
        sims = [SimDevice("127.0.0.1", port, i, current=ref_of(int8_bundle), login=(i, logins.devices[i])).start()
                for i in ids]
        for s in sims:
            assert fleet_main(["devices", "group", s.id, "lab", "--home", str(home)]) == 0
        with open_registry(home / "fleet.db") as reg:
            wait_until(lambda: known(reg, *(s.id for s in sims)), what="devices to report")
        capsys.readouterr()
        rc = fleet_main(["deploy", "digits:2", "--group", "lab", "--wait", "--wait-timeout", "60", "--home", str(home),
                         "--json"])
        r = json.loads(capsys.readouterr().out)
        assert rc == 0 and r["status"] == "succeeded" and len(r["stages"]) == 3  # 5 %, 25 %, 100 % of 3 devices
        v2 = sha256_file(int8_v2_bundle)[1]
        assert all(s.current.sha256 == v2 and s.files[v2] == int8_v2_bundle.read_bytes() for s in sims)
    finally:
        for s in sims:
            s.stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
