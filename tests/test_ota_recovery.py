"""When an update goes wrong after the install: a model that fails on live inputs (probation), a crash
inside a phase on every start (the state-store counter), and agent homes written by an older agent.
Real Mosquitto, real `edge-agent` processes, real bundles and ONNX Runtime.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import TrustStore
from edge_agent.home import AgentHome
from edge_agent.ota.daemon import Agent, AgentConfig
from edge_agent.ota.phases import MAX_STATE_STORES
from edge_agent.ota.slots import Health, Lifecycle, Slots

from .ota_fixtures import BLOCK, PROFILE, bundles, broker, fleet, home, install, status, v1_home  # noqa: F401 - pytest fixtures, used by name
from .ota_helpers import AgentProcess, repack, wait_for


# --- agent homes from an older agent ---------------------------------------------------------


def test_slot_json_from_before_the_lifecycle_health_split_is_read_and_rewritten(home, bundles, digits, capsys):
    """A home written by an older agent (one `status` per slot) keeps working: read as lifecycle + health,
    rewritten in the new schema on the next change."""
    slot_a = home / "slots" / "a" / "slot.json"
    meta = json.loads(slot_a.read_text())
    for key in ("lifecycle", "health", "schema_version"):
        meta.pop(key)
    slot_a.write_text(json.dumps({**meta, "status": "good"}))
    (home / "slots" / "b").mkdir()
    (home / "slots" / "b" / "slot.json").write_text(json.dumps({"status": "bad", "reason": "old failure"}))

    slots = Slots(AgentHome(home).slots_dir)
    a, b = slots.info("a"), slots.info("b")
    assert (a.lifecycle, a.health, a.usable) == (Lifecycle.ACTIVE, Health.GOOD, True)
    assert (b.lifecycle, b.health, b.usable) == (Lifecycle.INSTALLING, Health.BAD, False)
    s = status(home, capsys)
    assert (s["slots"]["a"]["status"], s["slots"]["a"]["lifecycle"]) == ("good", "active")
    assert s["slots"]["b"]["status"] == "bad"

    assert install(home, bundles["v2"], digits.pub) == 0  # into b, over the old bad slot
    b = slots.info("b")
    assert (b.lifecycle, b.health) == (Lifecycle.ACTIVE, Health.GOOD)
    slots.mark_health("a", Health.BAD, reason="test")
    rewritten = json.loads(slot_a.read_text())
    assert "status" not in rewritten and rewritten["schema_version"] == 2
    assert (rewritten["lifecycle"], rewritten["health"]) == ("installed", "bad") and rewritten["manifest"]


# --- probation: an update that passes its self-test but fails on live inputs is undone ------------


def _fragile_model(model_path: Path, selftest: Path, out: Path) -> tuple[Path, float]:
    """The same network plus a lookup indexed by the input's mean brightness: exact on the bundle's self-test
    inputs (dark background digits), out of bounds - an ONNX Runtime error - on bright inputs. Returns the
    model and the mean brightness from which it fails."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with np.load(selftest) as st:
        x = next(st[k] for k in st.files if k.startswith("input"))
    size = int(np.floor(x.reshape(len(x), -1).mean(1).max() * 10)) + 1  # every self-test input stays in range
    model = onnx.load(str(model_path))
    g = model.graph
    final = g.output[0].name
    producer = next(n for n in g.node if final in n.output)
    producer.output[list(producer.output).index(final)] = "fragile_inner"
    g.initializer.extend([numpy_helper.from_array(np.zeros(size, np.float32), "fragile_table"),
                          numpy_helper.from_array(np.array(10.0, np.float32), "fragile_ten")])
    g.node.extend([
        helper.make_node("ReduceMean", [g.input[0].name], ["fragile_mean"], keepdims=0),
        helper.make_node("Mul", ["fragile_mean", "fragile_ten"], ["fragile_scaled"]),
        helper.make_node("Floor", ["fragile_scaled"], ["fragile_floor"]),
        helper.make_node("Cast", ["fragile_floor"], ["fragile_idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["fragile_table", "fragile_idx"], ["fragile_zero"]),
        helper.make_node("Add", ["fragile_inner", "fragile_zero"], [final]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out, size / 10.0


def test_update_that_fails_on_live_inputs_is_rolled_back_during_probation(home, bundles, digits, broker, fleet, tmp_path):
    from edge_agent.ota.live import InferenceLoop

    def swap_model(files):
        files["model/model.onnx"], _ = _fragile_model(files["model/model.onnx"], files["selftest.npz"], tmp_path / "f.onnx")

    fragile = repack(bundles["v2"], tmp_path / "fragile-v3.edgebundle", digits.key, digits.pub,
                     lambda m: setattr(m, "version", 3), swap_model)
    bright = (1.0 - digits.x_test[:50]).astype(np.float32)  # white-background digits: a "camera" the self-test never saw

    def live_source(model, i):
        return {model.manifest.inputs[0].name: bright[i % len(bright)].reshape(model.manifest.inputs[0].shape)}

    dev = "dev-probation"
    cfg = AgentConfig(broker=broker.url, device_id=dev, profile_name=PROFILE, latency_budget_ms=500.0,
                      trust=TrustStore.from_paths([digits.pub]), telemetry_interval_s=0.5, threads=1, probation_s=30.0)
    agent = Agent(AgentHome(home), cfg, loop=InferenceLoop(source=live_source, interval_s=0.01))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.loop.inferences > 20, what="v1 serving bright inputs")
        assert agent.loop.errors == 0
        fleet.deploy(dev, fragile, "dep-fragile", block_size=BLOCK)
        # it installs, passes its self-test and switches ("succeeded") ... then fails on the live inputs
        r = fleet.wait_phase(dev, "dep-fragile", phases=("rolled_back",))
        assert r.current.version == 1 and "inferences on live inputs failed" in r.last_error
        assert "indices" in r.last_error or "out of" in r.last_error  # ONNX Runtime's own reason
        assert agent.loop.current.ref.version == 1
        ok_v1 = agent.loop.inferences
        wait_for(lambda: agent.loop.inferences > ok_v1 + 20, what="v1 serving again")
        slots = Slots(AgentHome(home).slots_dir)
        bad = next(s for s in (slots.info("a"), slots.info("b")) if s.ref and s.ref.version == 3)
        assert bad.health is Health.BAD and "rolled back after the switch" in bad.reason
        # the retained desired state is re-delivered on reconnect: it must not re-install what was undone
        agent.link.client.reconnect()
        wait_for(lambda: agent.link.connected.is_set(), what="reconnected")
        threading.Event().wait(1.0)
        assert agent.loop.current.ref.version == 1 and fleet.last_reported(dev).phase == "rolled_back"
    finally:
        agent.stop()
        thread.join(20)


# --- a crash inside a phase cannot loop forever (Mender's state-store counter) ---------------------


def test_crash_inside_the_health_check_ends_failed_at_the_state_loop_limit(home, bundles, digits, broker, fleet):
    """The agent dies inside the health check on every start (the test hook stops it dead there and the test
    kills it, as a model that takes the process down would). Each restart resumes into the same phase; past
    the store limit the job ends `failed` ("state loop detected"), reported, and the agent keeps serving v1
    and keeps taking deployments."""
    dev, dep = "dev-crash-loop", "dep-crash-loop"
    crash = {"EDGEKIT_TEST_PAUSE_PHASE": "health_check"}
    job_file, marker = home / "ota" / "update.json", home / "ota" / "paused-at"

    def crashed_or_failed():
        r = fleet.last_reported(dev)
        if r is not None and r.deployment_id == dep and r.phase == "failed":
            return "failed"
        return "crashed" if agent.paused_at() == "health_check" else None

    agent = AgentProcess(home, broker.url, dev, digits.pub, env=crash)
    fleet.deploy(dev, bundles["v2"], dep, block_size=BLOCK)
    stores: list = []
    for restart in range(8):
        if wait_for(crashed_or_failed, what="a crash in health_check or the job failed") == "failed":
            break
        agent.kill9()
        agent.stop()
        marker.unlink()
        job = json.loads(job_file.read_text())
        stores.append(job.get("state_stores"))
        if restart == 1:  # fast-forward the 20 crashes in between, as the counter would have recorded them
            job["state_stores"] = MAX_STATE_STORES - 1
            job_file.write_text(json.dumps(job))
        agent = AgentProcess(home, broker.url, dev, digits.pub, env=crash)
    else:
        agent.stop()
        pytest.fail(f"the agent crashed into health_check {restart + 1} times and would go on forever")
    try:
        assert stores[1] == stores[0] + 1  # one store per restart
        r = fleet.wait_phase(dev, dep)
        assert r.phase == "failed" and "health_check: state loop detected" in r.last_error, r.last_error
        assert r.current.version == 1
        job = json.loads(job_file.read_text())
        assert job["error_kind"] == "state-loop" and job["phase"] == "failed"
        target = Slots(AgentHome(home).slots_dir).info(job["target_slot"])
        assert target.health is Health.BAD and not target.usable  # never booted as a fallback
        seen = wait_for(lambda: fleet.last_telemetry(dev), what="telemetry").inferences
        t = wait_for(lambda: (t := fleet.last_telemetry(dev)) and t.inferences > seen and t, what="inferences")
        assert t.model.version == 1 and t.errors == 0
    finally:
        assert agent.stop() == 0
    agent = AgentProcess(home, broker.url, dev, digits.pub)  # no more crashes: the next deployment goes through
    try:
        fleet.deploy(dev, bundles["v2"], "dep-after-loop", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-after-loop")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
    finally:
        assert agent.stop() == 0
