"""The fleet on a real two-node broker cluster (Debian's ejabberd, mod_mqtt, Erlang clustering on
loopback): the fleet server on one node, devices on both; a staged rollout reaches them all, blocks
crossing between the nodes. The protocol keeps to standard MQTT 3.1.1, so a clustered broker serves.
A real agent given both nodes (`--broker` twice) gets a deployment published while it was away
(retained on the other node only: the fleet resends it when the agent comes online), then its node
is killed (kill -9): it reconnects to the other node and still gets the next deployment.
The fleet server given both nodes moves to the other when its node is killed between two stages and
finishes the rollout; and a node killed while two real agents are halfway through downloading a
bundle's blocks (one agent and the server on it, one on the other node): the agent and the server move
over, both downloads go on from the blocks they have (none asked for twice) and both agents end on the
new bundle (test_fleet_cluster_downloads.py)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from edge_agent.bundle import TrustStore
from edge_agent.home import AgentHome
from edge_agent.ota.daemon import Agent, AgentConfig
from edge_agent.ota.slots import Slots
from edge_fleet.mqtt import MqttSettings
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus
from edge_fleet.rollout import plan_rollout
from edge_fleet.server import FleetServer

from .ejabberd_cluster import EjabberdCluster
from .fleet_sim import SimDevice, ref_of
from .ota_fixtures import PROFILE, bundles, v1_home  # noqa: F401 - the agent's home with v1 installed

pytestmark = pytest.mark.cluster


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _fleet_on_node_0(cluster: EjabberdCluster, tmp_path, digits, *bundles, nodes: tuple[int, ...] = (0,)) -> tuple:
    """(registry with `bundles` published, a started fleet server given `nodes`, on node 0)."""
    reg = open_registry(tmp_path / "fleet.db")
    trust = TrustStore.from_paths([digits.pub])
    for bundle in bundles:
        publish_bundle(reg, bundle, trust)
    settings = MqttSettings(url="", username=cluster.user, password=cluster.password)
    urls = [f"mqtt://127.0.0.1:{cluster.ports[i]}" for i in nodes]
    return reg, FleetServer(reg, urls, settings=settings, tick=0.05).start()


def test_a_rollout_reaches_devices_on_both_nodes_of_a_real_ejabberd_cluster(tmp_path, int8_bundle, int8_v2_bundle,
                                                                             digits):
    with EjabberdCluster() as cluster:
        assert len(cluster.nodes()) == 2
        login = (cluster.user, cluster.password)
        reg, server = _fleet_on_node_0(cluster, tmp_path, digits, int8_bundle, int8_v2_bundle)
        sims = []
        try:
            # devices alternate between the nodes: the server on node 0 serves those on node 1 too
            sims = [SimDevice("127.0.0.1", cluster.ports[i % 2], f"pi-{i}", current=ref_of(int8_bundle),
                              login=login).start() for i in range(4)]
            _wait(lambda: all(reg.device(s.id) is not None for s in sims), 20, "reports from both nodes")
            plan = plan_rollout(reg, "digits:2", devices=[s.id for s in sims], stages=[50, 100])
            _wait(lambda: reg.rollout(plan.id).status == RolloutStatus.SUCCEEDED, 90, "the rollout to finish")
            v2 = ref_of(int8_v2_bundle)
            assert all(s.current == v2 for s in sims)
            assert all(reg.device(s.id).current == v2 for s in sims)
        finally:
            for s in sims:
                s.stop()
            server.stop()
            reg.close()


def test_the_fleet_server_follows_the_cluster_when_its_node_is_killed_and_finishes_the_rollout(
        tmp_path, int8_bundle, int8_v2_bundle, digits):
    with EjabberdCluster() as cluster:
        reg, server = _fleet_on_node_0(cluster, tmp_path, digits, int8_bundle, int8_v2_bundle, nodes=(0, 1))
        node1 = f"mqtt://127.0.0.1:{cluster.ports[1]}"
        sims = []
        try:
            assert server.broker_in_use.endswith(f":{cluster.ports[0]}")
            sims = [SimDevice("127.0.0.1", cluster.ports[1], f"pi-{i}", current=ref_of(int8_bundle),
                              login=(cluster.user, cluster.password)).start() for i in range(3)]
            _wait(lambda: all(reg.device(s.id) is not None for s in sims), 20, "reports across the nodes")
            # stage 1 (one device), then a 4 s soak during which the server's node dies; stage 2 follows
            plan = plan_rollout(reg, "digits:2", devices=[s.id for s in sims], stages=[30, 100], stage_soak=4)
            _wait(lambda: all(t.status == "succeeded" for t in reg.rollout(plan.id).targets if t.stage == 0), 60,
                  "stage 1")
            killed_at = time.time()
            cluster.kill_node(0)
            _wait(lambda: server.broker_in_use == node1 and server.client.is_connected(), 30, "the server on node 1")
            _wait(lambda: reg.rollout(plan.id).status == RolloutStatus.SUCCEEDED, 90, "the rollout to finish")
            r = reg.rollout(plan.id)
            assert all(t.sent_at > killed_at for t in r.targets if t.stage == 1)  # published through node 1
            v2 = ref_of(int8_v2_bundle)
            assert all(s.current == v2 and reg.device(s.id).current == v2 for s in sims)
        finally:
            for s in sims:
                s.stop()
            server.stop()
            reg.close()


def _agent(home, cluster: EjabberdCluster, pub, device_id: str = "pi-roam",
           nodes: tuple[int, ...] = (1, 0)) -> tuple[Agent, threading.Thread]:
    """A real agent that knows the `nodes` in that order (default both, node 1 first)."""
    urls = ",".join(f"mqtt://127.0.0.1:{cluster.ports[i]}" for i in nodes)
    cfg = AgentConfig(broker=urls, device_id=device_id, profile_name=PROFILE, latency_budget_ms=500.0,
                      trust=TrustStore.from_paths([pub]), telemetry_interval_s=0.5, threads=1, probation_s=0,
                      username=cluster.user, password=cluster.password, keepalive_s=5)
    agent = Agent(AgentHome(home), cfg)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def test_an_agent_follows_the_cluster_when_its_node_is_killed(tmp_path, v1_home, int8_bundle,  # noqa: F811
                                                          int8_v2_bundle, digits):
    home = tmp_path / "home"
    shutil.copytree(v1_home, home)
    v1, v2 = ref_of(int8_bundle), ref_of(int8_v2_bundle)
    with EjabberdCluster() as cluster:
        reg, server = _fleet_on_node_0(cluster, tmp_path, digits, int8_bundle, int8_v2_bundle)
        agent = None
        try:
            agent, thread = _agent(home, cluster, digits.pub)
            _wait(lambda: (d := reg.device("pi-roam")) is not None and d.current == v1, 30, "the agent's report")
            assert agent.link.broker_url.endswith(f":{cluster.ports[1]}")
            agent.stop()
            thread.join(30)
            _wait(lambda: reg.device("pi-roam").presence == "offline", 20, "the agent offline")
            # published while the agent is away: retained on node 0 only, the agent comes back on node 1
            plan = plan_rollout(reg, "digits:2", devices=["pi-roam"], stages=[100], stage_timeout=120)
            _wait(lambda: reg.rollout(plan.id).target("pi-roam").status == "sent", 20, "the desired state sent")
            agent, thread = _agent(home, cluster, digits.pub)
            _wait(lambda: reg.rollout(plan.id).status == RolloutStatus.SUCCEEDED, 90, "the rollout to finish")
            assert agent.link.broker_url.endswith(f":{cluster.ports[1]}")

            cluster.kill_node(1)
            _wait(lambda: agent.link.connected.is_set() and agent.link.broker_url.endswith(f":{cluster.ports[0]}"),
                  60, "the agent on node 0")
            reg.request_rollout(plan.id, "rollback", "op")  # the next deployment: v1 back
            _wait(lambda: reg.rollout(plan.id).status == RolloutStatus.HALTED, 90, "the roll-back to settle")
            assert reg.rollout(plan.id).target("pi-roam").status == "rolled_back"
            assert Slots(home / "slots").active().ref.sha256 == v1.sha256
            assert reg.device("pi-roam").current == v1 and v2 != v1
        finally:
            if agent is not None:
                agent.stop()
                thread.join(30)
            server.stop()
            reg.close()
