"""The fleet server given several broker URLs (the nodes of a clustered broker) on real Mosquittos: a real
`edge-fleet serve --broker A --broker B,C` starts on the first that answers; when that broker is killed
(kill -9) it reconnects to the next, subscribes there and keeps driving its rollout. The brokers here are
independent (not a cluster): the server sees the devices of the broker it is on. On a real two-node
cluster: test_fleet_cluster.py."""

from __future__ import annotations

import json
import os
import signal

from edge_agent.bundle import TrustStore
from edge_fleet.broker import start_broker
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus
from edge_fleet.rollout import plan_rollout

from .fleet_http_helpers import FleetProcess
from .fleet_sim import SimDevice, ref_of
from .ota_helpers import wait_for
from .ports import free_port


def test_serve_moves_to_the_next_broker_when_its_broker_is_killed_and_finishes_the_rollout(
        tmp_path, int8_bundle, int8_v2_bundle, digits):
    home = tmp_path / "fleet"
    reg = open_registry(home / "fleet.db", store_dir=home / "bundles")
    for bundle in (int8_bundle, int8_v2_bundle):
        publish_bundle(reg, bundle, TrustStore.from_paths([digits.pub]))
    first = start_broker(tmp_path / "first", prefer="mosquitto", fallback=False)
    second = start_broker(tmp_path / "second", prefer="mosquitto", fallback=False)
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: skipped at start
    fleet = sims = None
    try:
        fleet = FleetProcess(home, "--broker", dead, "--broker", f"{first.url},{second.url}")
        assert fleet.info["connected_to"] == first.url and fleet.info["brokers"] == 3
        # one device on each broker (not a cluster: the server sees those of the broker it is on)
        sims = [SimDevice("127.0.0.1", b.port, f"pi-{i}", current=ref_of(int8_bundle)).start()
                for i, b in enumerate((first, second))]
        wait_for(lambda: reg.device("pi-0") is not None, 20, "the report on the first broker")
        assert reg.device("pi-1") is None
        sims[0].kill()
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: reg.device("pi-1") is not None, 30, "the report on the second broker")
        plan = plan_rollout(reg, "digits:2", devices=["pi-1"], stages=[100], stage_timeout=60)
        wait_for(lambda: reg.rollout(plan.id).status == RolloutStatus.SUCCEEDED, 60, "the rollout on the next broker")
        assert sims[1].current == ref_of(int8_v2_bundle) and reg.device("pi-1").current == ref_of(int8_v2_bundle)
        assert f"lost the connection to MQTT broker {first.url}" in fleet.log.read_text()
        assert f"trying the next broker: {second.url}" in fleet.log.read_text()
    finally:
        if sims:
            sims[1].stop()
        if fleet is not None:
            assert fleet.stop() == 0
        reg.close()
        first.stop()
        second.stop()


def test_serve_with_no_broker_answering_names_each_one_and_exits_8(tmp_path, capsys):
    from edge_fleet.cli import main as fleet_main

    dead = [f"mqtt://127.0.0.1:{free_port()}" for _ in range(2)]
    code = fleet_main(["serve", "--home", str(tmp_path / "fleet"), "--broker", ",".join(dead)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 8 and len(err) == 1 and all(f"cannot reach MQTT broker {url}" in err[0] for url in dead)
    code = fleet_main(["serve", "--home", str(tmp_path / "fleet"), "--broker", dead[0], "--broker", "mqtts://n2"])
    assert code == 8 and "mix mqtt:// and mqtts://" in capsys.readouterr().err


def test_serve_json_names_the_broker_as_given_without_its_password(tmp_path):
    """Fails before the fix: `broker` echoed mqtt://fleet:s3cret-pw@... into the JSON (and so into logs)."""
    from edge_agent.ota.broker_url import redact_broker_urls

    broker = start_broker(tmp_path / "locked", prefer="mosquitto", fallback=False, users={"fleet": "s3cret-pw"})
    dead = f"mqtt://other:pw2@127.0.0.1:{free_port()}"
    fleet = None
    try:
        fleet = FleetProcess(tmp_path / "fleet", "--broker", f"{dead},mqtt://fleet:s3cret-pw@127.0.0.1:{broker.port}")
        assert fleet.info["broker"] == f"{dead.replace(':pw2@', ':***@')},mqtt://fleet:***@127.0.0.1:{broker.port}"
        assert fleet.info["connected_to"] == broker.url
        assert "s3cret" not in json.dumps(fleet.info) and "pw2" not in json.dumps(fleet.info)
    finally:
        if fleet is not None:
            assert fleet.stop() == 0
        broker.stop()
    assert redact_broker_urls(["mqtt://u:p%40ss@h:1", "mqtts://h2", "mqtt://u2@h3"]) == \
        "mqtt://u:***@h:1,mqtts://h2,mqtt://u2@h3"
