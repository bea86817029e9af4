"""The fleet on a real two-node broker cluster (Debian's ejabberd, mod_mqtt, Erlang clustering on
loopback): the fleet server on one node, devices on both; a staged rollout reaches them all, blocks
crossing between the nodes. The protocol keeps to standard MQTT 3.1.1, so a clustered broker serves."""

from __future__ import annotations

import time

import pytest

from edge_agent.bundle import TrustStore
from edge_fleet.mqtt import MqttSettings
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus
from edge_fleet.rollout import plan_rollout
from edge_fleet.server import FleetServer

from .ejabberd_cluster import EjabberdCluster
from .fleet_sim import SimDevice, ref_of

pytestmark = pytest.mark.cluster


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_rollout_reaches_devices_on_both_nodes_of_a_real_ejabberd_cluster(tmp_path, int8_bundle, int8_v2_bundle,
                                                                             digits):
    with EjabberdCluster() as cluster:
        assert len(cluster.nodes()) == 2
        login = (cluster.user, cluster.password)
        reg = open_registry(tmp_path / "fleet.db")
        trust = TrustStore.from_paths([digits.pub])
        for bundle in (int8_bundle, int8_v2_bundle):
            publish_bundle(reg, bundle, trust)
        settings = MqttSettings(url="", username=cluster.user, password=cluster.password)
        server = FleetServer(reg, f"mqtt://127.0.0.1:{cluster.ports[0]}", settings=settings, tick=0.05).start()
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
