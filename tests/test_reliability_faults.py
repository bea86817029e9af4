"""Fault tests of the agent (issue 12): a live fuzz of a real agent process on a real Mosquitto, every
persisted file corrupted, and a disk that is full when the agent resumes each update phase after a
`kill -9`. The agent must never lose its working model and must keep taking updates.

`kill -9` in each phase (with the download really in flight) is tests/test_ota_agent.py's
test_kill9_in_each_phase_then_restart_finishes_on_a_working_model; the state-loop limit is
tests/test_ota_recovery.py's test_crash_inside_the_health_check_ends_failed_at_the_state_loop_limit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_agent.home import AgentHome
from edge_agent.ota.protocol import Topics, dumps
from edge_agent.ota.slots import Health, Slots

from .fault_helpers import fill, needs_root, small_disk
from .fuzz_cases import CORRUPTIONS, publishes
from .ota_fixtures import BLOCK, agent_in_process, bundles, broker, fleet, home, install, v1_home  # noqa: F401
from .ota_helpers import AgentProcess, desired_for, repack, wait_for

PHASES = ["downloading", "verifying", "installing", "health_check", "switching"]


@pytest.fixture(scope="module")
def v3(bundles, digits, tmp_path_factory) -> Path:
    """A good v3 (v2's payload re-signed), the update every fault test must still be able to take."""
    def bump(m):
        m.version = 3
    return repack(bundles["v2"], tmp_path_factory.mktemp("v3") / "digits-v3.edgebundle", digits.key, digits.pub, bump)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def serves_a_good_model(home: Path) -> int:
    """The version of the active slot, which must hold a complete model not marked bad."""
    active = Slots(AgentHome(home).slots_dir).active()
    assert active is not None and active.usable and active.health is not Health.BAD, active
    return active.ref.version


def takes_an_update(fleet, dev: str, bundle: Path, dep: str) -> None:
    fleet.deploy(dev, bundle, dep, block_size=BLOCK)
    r = fleet.wait_phase(dev, dep)
    assert r.phase == "succeeded", r.last_error


# live fuzz ------------------------------------------------------------------------------------


def test_live_fuzz_of_a_real_agent_process_on_mosquitto(home, bundles, digits, broker, fleet):
    """600 malformed, mistyped, oversized or forged messages in a few seconds, then a real update."""
    dev = "fuzz-live"
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        wait_for(lambda: fleet.last_reported(dev), what="the agent to report")
        before = rss_bytes(agent.proc.pid)
        valid = json.loads(dumps(desired_for(bundles["v2"], "dep-fuzz", block_size=BLOCK)))
        topics = Topics()
        last = None
        for _kind, topic_kind, payload in publishes(12, valid, 600):
            topic = topics.desired(dev) if topic_kind == "desired" else topics.block_data(dev)
            last = fleet.c.publish(topic, payload, qos=1)
        last.wait_for_publish(30)
        takes_an_update(fleet, dev, bundles["v2"], "dep-after-fuzz")
        assert agent.proc.poll() is None
        assert rss_bytes(agent.proc.pid) - before < 64 << 20  # the probe saw +530 MB from one message
        assert serves_a_good_model(home) == 2
    finally:
        assert agent.stop() == 0


# every persisted file corrupted ----------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_home(v1_home, bundles, digits, v3, broker, tmp_path_factory) -> Path:
    """v1 in slot a, v2 active in slot b, and a download of v3 killed (-9) with 4 blocks on disk."""
    from .ota_helpers import FleetStub

    home = tmp_path_factory.mktemp("interrupted") / "home"
    shutil.copytree(v1_home, home)
    assert install(home, bundles["v2"], digits.pub) == 0
    stub = FleetStub(broker.host, broker.port)
    agent = AgentProcess(home, broker.url, "corrupt-base", digits.pub, env={"EDGEKIT_TEST_PAUSE_AFTER_BLOCKS": "4"})
    try:
        stub.deploy("corrupt-base", v3, "dep-v3-interrupted", block_size=BLOCK)
        wait_for(lambda: agent.paused_at() == "blocks:4", what="the download to pause")
        agent.kill9()
    finally:
        agent.stop()
        stub.close()
    (home / "ota" / "paused-at").unlink()
    return home


PERSISTED = ["ota/update.json", "slots/state.json", "slots/a/slot.json", "slots/b/slot.json", "staging/*.blocks.json",
             "staging/*.part"]


@pytest.mark.parametrize("relpath", PERSISTED)
def test_a_corrupt_persisted_file_never_costs_the_model_or_later_updates(relpath, interrupted_home, bundles, digits,
                                                                         v3, broker, fleet, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(interrupted_home, home)
    pattern = relpath.replace("staging/", "ota/staging/")
    (path,) = home.glob(pattern)
    kind = list(CORRUPTIONS)[PERSISTED.index(relpath) % len(CORRUPTIONS)]
    path.write_bytes(CORRUPTIONS[kind](path.read_bytes()))
    dev = "corrupt-" + relpath.replace("/", "-").replace("*", "x").replace(".", "-")
    fleet.offer(v3)  # the interrupted download resumes from this fleet
    agent, thread = agent_in_process(home, broker.url, dev, digits.pub)
    try:
        wait_for(lambda: agent.loop.current is not None, what="a model to serve")
        # v3's interrupted download resumes at once and may already have switched (seen under load)
        assert serves_a_good_model(home) in (1, 2, 3)
        wait_for(lambda: not agent.jobs.phase.is_unfinished, what="the interrupted job to end")
        takes_an_update(fleet, dev, v3, "dep-v3-after-" + kind.replace(" ", "-"))
        assert serves_a_good_model(home) == 3
    finally:
        agent.stop()
        thread.join(20)


def _serving(fleet, dev: str) -> int | None:
    """The version the agent's inference loop runs, from its telemetry (None before one is served)."""
    t = fleet.last_telemetry(dev)
    return t.model.version if t is not None and t.model is not None and t.inferences > 0 else None


def test_a_one_slot_home_whose_slot_json_is_damaged_serves_its_model_after_a_kill(home, bundles, digits, broker,
                                                                                 fleet):
    """Only slot a (v1). kill -9 the agent, damage slots/a/slot.json, restart: the agent rebuilds slot.json
    from the slot's kept signed manifest (trusted key, files re-hashed) and serves v1 again at once, then
    takes v2. Failed before: the slot read as empty and no model was served until the next update."""
    dev, slot_json = "one-slot", home / "slots" / "a" / "slot.json"
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        wait_for(lambda: _serving(fleet, dev) == 1, what="v1 to be served")
        agent.kill9()
    finally:
        agent.stop()
    before = json.loads(slot_json.read_text())
    slot_json.write_bytes(CORRUPTIONS["truncated"](slot_json.read_bytes()))
    with fleet.lock:
        fleet.telemetry.pop(dev, None)
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        wait_for(lambda: _serving(fleet, dev) == 1, what="v1 to be served again")
        rebuilt = json.loads(slot_json.read_text())
        assert (rebuilt["ref"], rebuilt["manifest"], rebuilt["health"]) == (before["ref"], before["manifest"], "unknown")
        takes_an_update(fleet, dev, bundles["v2"], "dep-one-slot-v2")
        assert serves_a_good_model(home) == 2
    finally:
        assert agent.stop() == 0


# a full disk in every phase --------------------------------------------------------------------


@needs_root
@pytest.mark.faults
@pytest.mark.parametrize("phase", PHASES)
def test_full_disk_when_each_phase_resumes(phase, v1_home, bundles, digits, v3, broker, fleet, tmp_path):
    """kill -9 inside `phase`, the disk fills up, the agent restarts into the phase: the job ends (failed,
    or succeeded if nothing more had to be written), a good model serves throughout, and once space is
    back the next deployment goes through."""
    dev = f"full-{phase.replace('_', '-')}"
    with small_disk(tmp_path / "disk") as disk:
        home = disk / "home"
        shutil.copytree(v1_home, home)
        agent = AgentProcess(home, broker.url, dev, digits.pub, env={"EDGEKIT_TEST_PAUSE_PHASE": phase})
        try:
            fleet.deploy(dev, bundles["v2"], f"dep-{dev}", block_size=BLOCK)
            wait_for(lambda: agent.paused_at() == phase, what=f"the agent to pause in {phase}")
            agent.kill9()
        finally:
            agent.stop()
        (home / "ota" / "paused-at").unlink()
        filler = fill(disk)
        agent, thread = agent_in_process(home, broker.url, dev, digits.pub)
        try:
            r = fleet.wait_phase(dev, f"dep-{dev}")
            assert r.phase in ("failed", "succeeded", "rolled_back"), r
            assert serves_a_good_model(home) in (1, 2)
            assert agent.worker._thread.is_alive()
            filler.unlink()
            takes_an_update(fleet, dev, v3, f"dep-v3-{dev}")
            assert serves_a_good_model(home) == 3
        finally:
            agent.stop()
            thread.join(20)
