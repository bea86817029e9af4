"""A broker node killed while devices download a bundle's blocks from the fleet server, on a real two-node
ejabberd cluster: the server and agent A on node 0, agent B on node 1, each given both nodes. Both agents
are halfway through a 4 MB bundle (32 blocks) when node 0 is killed (kill -9). The server and A reconnect
to node 1; A's desired state, retained on the dead node only, comes again from the fleet when A shows up
there (the resend on presence); both downloads go on from the blocks already stored (the block protocol
asks for missing blocks only, staging file + bitmap), none asked for again, each block stored once, and
both agents end on the new bundle while the rollout succeeds.

Where the kill falls is made certain by gating the real block server: it answers each device's first 12
blocks, drops later requests until node 0 is dead (the agents keep asking every few seconds), then
answers everything."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter

import pytest

from edge_agent.ota.block_frames import BlockRequest
from edge_agent.ota.slots import Slots
from edge_fleet.registry.records import RolloutStatus
from edge_fleet.rollout import plan_rollout

from .ejabberd_cluster import EjabberdCluster
from .fleet_sim import ref_of
from .ota_fixtures import bundles, v1_home  # noqa: F401 - the agent's home with v1 installed
from .ota_helpers import repack
from .test_fleet_cluster import _agent, _fleet_on_node_0, _wait

pytestmark = pytest.mark.cluster
BEFORE_KILL = 12  # blocks each device gets before the kill


@pytest.fixture(scope="module")
def big_v2(int8_v2_bundle, digits, tmp_path_factory):
    """digits v2 carrying 4 MB more (32 blocks of 128 KiB), signed like the others."""
    def pad(files):
        extra = tmp_path_factory.mktemp("pad") / "padding.bin"
        extra.write_bytes(os.urandom(4 << 20))
        files["extra/padding.bin"] = extra

    return repack(int8_v2_bundle, tmp_path_factory.mktemp("big") / "digits-v2-big.edgebundle", digits.key,
                  digits.pub, files_edit=pad)


class BlockGate:
    """Wraps the fleet's real block server: each device's first `first` blocks, then nothing until opened."""

    def __init__(self, server, first: int) -> None:
        self.open = threading.Event()
        self.served: Counter[str] = Counter()
        self.dropped = 0
        self._serve = server.blocks.serve
        self.first = first
        server.blocks.serve = self.serve

    def serve(self, device_id: str, req: BlockRequest) -> int:
        if not self.open.is_set():
            room = max(0, self.first - self.served[device_id])
            self.dropped += len(req.blocks) - min(room, len(req.blocks))
            req = BlockRequest(req.sha256, req.blocks[:room], req.block_size)
            if not req.blocks:
                return 0
        sent = self._serve(device_id, req)
        self.served[device_id] += sent
        return sent


def test_devices_halfway_through_a_download_finish_it_on_the_other_node_when_theirs_is_killed(
        tmp_path, v1_home, int8_bundle, big_v2, digits):  # noqa: F811
    homes = {d: tmp_path / d for d in ("pi-a", "pi-b")}
    for home in homes.values():
        shutil.copytree(v1_home, home)
    v2 = ref_of(big_v2)
    with EjabberdCluster() as cluster:
        reg, server = _fleet_on_node_0(cluster, tmp_path, digits, int8_bundle, big_v2, nodes=(0, 1))
        gate = BlockGate(server, BEFORE_KILL)
        agents = {}
        try:
            agents["pi-a"] = _agent(homes["pi-a"], cluster, digits.pub, "pi-a", nodes=(0, 1))
            agents["pi-b"] = _agent(homes["pi-b"], cluster, digits.pub, "pi-b", nodes=(1, 0))
            _wait(lambda: all((d := reg.device(i)) is not None and d.presence == "online" for i in agents), 30,
                  "both agents' reports")
            plan = plan_rollout(reg, "digits:2", devices=list(agents), stages=[100], stage_timeout=180)
            downloads = {}

            def halfway() -> bool:
                for i, (agent, _) in agents.items():
                    dl = agent.worker.downloader
                    if dl is None or len(dl.completed) < BEFORE_KILL:
                        return False
                    downloads[i] = dl
                return True

            try:
                _wait(halfway, 60, "both downloads halfway")
            except AssertionError as exc:  # say where each device stood (it timed out once in a full run)
                where = {i: (a.jobs.phase.value, a.jobs.job.last_error if a.jobs.job else None,
                             None if a.worker.downloader is None else len(a.worker.downloader.completed),
                             a.link.connected.is_set()) for i, (a, _) in agents.items()}
                rollout = reg.rollout(plan.id) if hasattr(plan, "id") else None
                raise AssertionError(f"{exc}: (phase, last error, blocks, connected) {where}; rollout "
                                     f"{rollout.status if rollout else plan}; gate {vars(gate)}") from None
            total = downloads["pi-a"].count
            before = {i: (dl.completed, len(dl.stats.requested_blocks)) for i, dl in downloads.items()}
            assert all(len(done) == BEFORE_KILL < total for done, _ in before.values())
            cluster.kill_node(0)
            gate.open.set()
            _wait(lambda: reg.rollout(plan.id).status == RolloutStatus.SUCCEEDED, 120, "the rollout to finish")
            assert server.broker_in_use.endswith(f":{cluster.ports[1]}")
            assert agents["pi-a"][0].link.broker_url.endswith(f":{cluster.ports[1]}")
            assert gate.dropped > 0  # the agents kept asking while the gate was shut
            for i, (agent, _) in agents.items():
                done, asked = before[i]
                stats = agent.worker.last_downloader_stats
                assert stats is downloads[i].stats  # the same download went on: not started again
                assert not set(stats.requested_blocks[asked:]) & done  # stored blocks never asked for again
                assert stats.received == total and stats.resumed_with == 0  # each block stored once
                assert Slots(homes[i] / "slots").active().ref.sha256 == v2.sha256
                assert reg.device(i).current == v2
        finally:
            for agent, thread in agents.values():
                agent.stop()
                thread.join(30)
            server.stop()
            reg.close()
