"""OTA agent tests: real Mosquitto, real `edge-agent` processes, real bundles and ONNX Runtime.

The fleet side is played by tests/ota_helpers.FleetStub (a real MQTT peer).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import TrustStore, generate_keypair
from edge_agent.cli import main as agent_main
from edge_agent.home import AgentHome
from edge_agent.ota.daemon import Agent, AgentConfig
from edge_agent.ota.phases import MAX_STATE_STORES
from edge_agent.ota.slots import Health, Lifecycle, Slots
from edge_fleet.broker import start_broker
from .ota_helpers import AgentProcess, FleetStub, repack, wait_for

PROFILE = "raspberry-pi-4"
BLOCK = 2048  # small blocks: the ~50 KB bundle travels as ~25 blocks


# --- bundles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(digits, int8_bundle, tmp_path_factory):
    """v1 (int8 fixture), v2 and broken/foreign v3 variants, re-signed from v1.

    v2 is v1's payload re-signed as version 2 (what `edge-convert --model-version 2` would
    produce for the same weights) - a second conversion would double this module's set-up time.
    """
    out = tmp_path_factory.mktemp("ota-bundles")

    def bump(v: int, **fields):
        def edit(m):
            m.version = v
            for k, val in fields.items():
                setattr(m, k, val)
        return edit

    def alter_selftest(files):
        path = files["selftest.npz"]
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["output.0"] = arrays["output.0"] + 25.0  # recorded answers no longer match the model
        altered = path.with_name("altered.npz")
        np.savez(altered, **arrays)
        files["selftest.npz"] = altered

    other_key, _ = generate_keypair(out / "other-keys")
    v2 = repack(int8_bundle, out / "digits-v2.edgebundle", digits.key, digits.pub, bump(2))
    return {
        "v1": int8_bundle,
        "v2": v2,
        "bad_selftest": repack(v2, out / "bad-selftest-v3.edgebundle", digits.key, digits.pub, bump(3), alter_selftest),
        "untrusted": repack(v2, out / "untrusted-v3.edgebundle", other_key, digits.pub, bump(3)),
        "pi5": repack(v2, out / "pi5-v3.edgebundle", digits.key, digits.pub, bump(3, profile="raspberry-pi-5")),
    }


def cli(home: Path, *args: str) -> int:
    return agent_main(["--home", str(home), *args])


def install(home: Path, bundle: Path, pub: Path, *extra: str) -> int:
    return cli(home, "install", str(bundle), "--trust", str(pub), "--profile", PROFILE, "--threads", "1", *extra)


def status(home: Path, capsys) -> dict:
    capsys.readouterr()
    assert cli(home, "status", "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def v1_home(bundles, digits, tmp_path_factory) -> Path:
    """An agent home with v1 side-loaded into slot a (copied per test)."""
    home = tmp_path_factory.mktemp("template") / "home"
    assert install(home, bundles["v1"], digits.pub) == 0
    return home


@pytest.fixture
def home(v1_home, tmp_path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(v1_home, target)
    return target


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = start_broker(tmp_path_factory.mktemp("mosq"), prefer="mosquitto", fallback=False)
    yield b
    b.stop()


@pytest.fixture
def fleet(broker):
    f = FleetStub(broker.host, broker.port)
    yield f
    f.close()


# --- side-loaded install, refusals, rollback ----------------------------------------------


def test_sideload_install_refusals_and_rollback(home, bundles, digits, capsys):
    s = status(home, capsys)
    assert (s["active_slot"], s["model"], s["version"], s["phase"]) == ("a", "digits", 1, "succeeded")

    assert install(home, bundles["untrusted"], digits.pub) == 13  # signature
    assert install(home, bundles["pi5"], digits.pub) == 17  # built for another profile
    assert install(home, bundles["bad_selftest"], digits.pub) == 41  # health check: outputs differ
    s = status(home, capsys)
    assert s["version"] == 1 and s["active_slot"] == "a" and s["phase"] == "failed"
    assert "health_check" in s["last_error"] and "differs from the recorded output" in s["last_error"]
    assert (s["slots"]["b"]["lifecycle"], s["slots"]["b"]["health"]) == ("installed", "bad")

    assert install(home, bundles["v2"], digits.pub, "--latency-budget-ms", "0.0001") == 41  # latency budget
    assert "over the profile's budget" in status(home, capsys)["last_error"]

    assert install(home, bundles["v2"], digits.pub) == 0
    s = status(home, capsys)
    assert (s["active_slot"], s["version"], s["phase"], s["last_error"]) == ("b", 2, "succeeded", None)
    assert s["previous"]["version"] == 1

    assert install(home, bundles["v1"], digits.pub) == 53  # downgrade refused
    assert status(home, capsys)["version"] == 2

    assert cli(home, "rollback", "--json") == 0
    s = status(home, capsys)
    assert (s["active_slot"], s["version"], s["phase"]) == ("a", 1, "rolled_back")
    # the other slot (v2) is still there: rolling back again returns to it
    assert cli(home, "rollback") == 0 and status(home, capsys)["version"] == 2


def test_rollback_without_previous_fails_cleanly(tmp_path, bundles, digits, capsys):
    home = tmp_path / "fresh"
    assert cli(home, "rollback") == 50
    assert "no previous slot" in capsys.readouterr().err
    assert install(home, bundles["v1"], digits.pub) == 0
    assert cli(home, "rollback") == 50  # only one slot installed
    assert status(home, capsys)["version"] == 1


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


# --- over MQTT, real agent process -----------------------------------------------------------


def test_update_over_mqtt_with_malformed_messages_and_corrupt_block(home, bundles, digits, broker, fleet):
    dev = "dev-mqtt"
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        first = wait_for(lambda: fleet.last_telemetry(dev), what="telemetry")
        assert first.model.version == 1
        root = fleet.topics.device_root(dev)
        junk = [
            (f"{root}/desired", b"not json"),
            (f"{root}/desired", b"[1,2,3]"),
            (f"{root}/desired", json.dumps({"deployment_id": 5}).encode()),
            (f"{root}/desired", b"{" + b" " * (300 * 1024) + b"}"),  # oversized
            (f"{root}/blocks/data", b"EKB1\xff\xff\xff\xffgarbage"),
            (f"{root}/blocks/data", b"\x00" * 10),
            (f"{root}/blocks/data", b"\x00" * (2 << 20)),  # oversized, no download running
        ]
        for topic, payload in junk:
            fleet.publish_raw(topic, payload)
        fleet.corrupt_once = {3}
        fleet.deploy(dev, bundles["v2"], "dep-v2", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-v2")
        assert r.phase == "succeeded", r.last_error
        assert r.current.version == 2 and r.previous.version == 1 and r.last_error is None
        total = -(-bundles["v2"].stat().st_size // BLOCK)
        assert sorted(set(fleet.served)) == list(range(total))
        assert fleet.served.count(3) == 2  # the corrupt copy was dropped and the block fetched again
        assert all(fleet.served.count(i) == 1 for i in range(total) if i != 3)

        after = wait_for(lambda: (t := fleet.last_telemetry(dev)) and t.model.version == 2 and t.inferences > first.inferences and t,
                         what="telemetry on v2")
        assert after.errors == 0
        assert after.extra["ignored_messages"] >= len(junk) + 1  # junk + the corrupt block
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
    assert fleet.presence.get(dev) == "offline"


def test_refusals_over_mqtt_keep_the_working_model(home, bundles, digits, broker, fleet):
    dev = "dev-refuse"
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        wait_for(lambda: fleet.last_telemetry(dev), what="telemetry")
        cases = [
            ("dep-untrusted", bundles["untrusted"], {}, "not trust"),
            ("dep-pi5", bundles["pi5"], {}, "profile"),
            ("dep-bad-selftest", bundles["bad_selftest"], {}, "differs from the recorded output"),
        ]
        for dep, bundle, overrides, reason in cases:
            fleet.deploy(dev, bundle, dep, block_size=BLOCK, **overrides)
            r = fleet.wait_phase(dev, dep)
            assert r.phase == "failed" and reason in r.last_error, (dep, r.last_error)
            assert r.current.version == 1
            if dep in ("dep-untrusted", "dep-pi5"):  # refused before a single block was fetched
                assert not any(d == dev for d, _ in fleet.requests)
        # v2, then a downgrade to v1 is refused unless the fleet marks it a rollback
        fleet.deploy(dev, bundles["v2"], "dep-v2", block_size=BLOCK)
        assert fleet.wait_phase(dev, "dep-v2").phase == "succeeded"
        fleet.deploy(dev, bundles["v1"], "dep-down", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-down")
        assert r.phase == "failed" and "downgrade" in r.last_error and r.current.version == 2
        fleet.deploy(dev, bundles["v1"], "dep-rollback", block_size=BLOCK, allow_downgrade=True)
        r = fleet.wait_phase(dev, "dep-rollback")
        assert r.phase == "succeeded" and r.current.version == 1
        t = wait_for(lambda: (t := fleet.last_telemetry(dev)) and t.model.version == 1 and t, what="v1 telemetry")
        assert t.errors == 0
    finally:
        assert agent.stop() == 0


KILL_POINTS = ["downloading", "blocks:8", "verifying", "installing", "health_check", "switching"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill9_in_each_phase_then_restart_finishes_on_a_working_model(point, home, bundles, digits, broker, fleet):
    dev = "dev-kill-" + point.replace(":", "-").replace("_", "-")
    env = {"EDGEKIT_TEST_PAUSE_AFTER_BLOCKS": point.split(":")[1]} if point.startswith("blocks:") else \
        {"EDGEKIT_TEST_PAUSE_PHASE": point}
    agent = AgentProcess(home, broker.url, dev, digits.pub, env=env)
    desired = fleet.deploy(dev, bundles["v2"], f"dep-{dev}", block_size=BLOCK)
    try:
        wait_for(lambda: agent.paused_at() == point, what=f"agent to pause at {point}")
        agent.kill9()
    finally:
        agent.stop()
    done_before: set[int] = set()
    bitmap = home / "ota" / "staging" / f"{desired.bundle.sha256}.blocks.json"
    if point.startswith("blocks:"):
        bits = bytes.fromhex(json.loads(bitmap.read_text())["done"])
        done_before = {i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1}
        assert len(done_before) >= 8
    # the killed agent left its active model intact
    assert Slots(AgentHome(home).slots_dir).active().ref.version == 1
    (home / "ota" / "paused-at").unlink()
    n_requests = len(fleet.requests)
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        r = fleet.wait_phase(dev, f"dep-{dev}")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
        t = wait_for(lambda: (t := fleet.last_telemetry(dev)) and t.model.version == 2 and t.inferences > 0 and t,
                     what="inferences on v2 after restart")
        assert t.errors == 0
        asked_again = {i for d, blocks in fleet.requests[n_requests:] if d == dev for i in blocks}
        assert not asked_again & done_before  # completed blocks are never fetched again
    finally:
        assert agent.stop() == 0
    assert not bitmap.exists()  # staging cleaned after success


# --- in-process agent: broker restart resume, swap under load, HTTP source --------------------


def _agent_in_process(home: Path, url: str, dev: str, pub: Path, **kw) -> tuple[Agent, threading.Thread]:
    cfg = AgentConfig(broker=url, device_id=dev, profile_name=PROFILE, latency_budget_ms=500.0,
                      trust=TrustStore.from_paths([pub]), telemetry_interval_s=0.5, threads=1, **kw)
    agent = Agent(AgentHome(home), cfg)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def test_resume_after_broker_restart_refetches_no_completed_block(home, bundles, digits, tmp_path):
    # a broker whose message limit (20 KiB) is below the bundle size: only blocks can carry it
    b = start_broker(tmp_path / "mosq", prefer="mosquitto", fallback=False, max_message_mb=0.02)
    fleet = FleetStub(b.host, b.port)
    dev = "dev-restart"
    agent, thread = _agent_in_process(home, b.url, dev, digits.pub, infer_interval_s=0.02, block_retry_s=1.0)
    try:
        wait_for(lambda: agent.link.connected.is_set(), what="agent connected")
        fleet.serve_limit = 10
        desired = fleet.deploy(dev, bundles["v2"], "dep-restart", block_size=BLOCK)
        assert desired.size > 0.02 * 2**20
        wait_for(lambda: agent.worker.downloader is not None and len(agent.worker.downloader.completed) >= 10, what="10 blocks")
        b.stop()
        done_before = agent.worker.downloader.completed
        served_before = len(fleet.served)
        n_requests = len(fleet.requests)
        fleet.serve_limit = None
        b.restart()
        r = fleet.wait_phase(dev, "dep-restart")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
        total = -(-desired.size // BLOCK)
        asked_again = {i for _, blocks in fleet.requests[n_requests:] for i in blocks}
        served_after = fleet.served[served_before:]
        assert len(done_before) == 10
        assert not asked_again & done_before and not set(served_after) & done_before
        assert set(served_after) | done_before == set(range(total))
        assert agent.worker.last_downloader_stats.received == total
        assert agent.loop.errors == 0
    finally:
        agent.stop()
        thread.join(20)
        fleet.close()
        b.stop()


def test_swap_under_continuous_load_drops_no_inference(home, bundles, digits, broker, fleet):
    dev = "dev-load"
    agent, thread = _agent_in_process(home, broker.url, dev, digits.pub, infer_interval_s=0.0)
    try:
        wait_for(lambda: agent.loop.inferences > 50, what="inferences on v1")
        v1_model = agent.loop.current
        before = agent.loop.inferences
        fleet.deploy(dev, bundles["v2"], "dep-load", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-load")
        assert r.phase == "succeeded", r.last_error
        assert agent.loop.current.ref.version == 2 and agent.loop.current is not v1_model
        after = agent.loop.inferences
        wait_for(lambda: agent.loop.inferences > after + 50, what="inferences on v2")
        assert agent.loop.errors == 0 and agent.loop.last_error is None
        assert after > before
    finally:
        agent.stop()
        thread.join(20)


def test_http_source_with_range_resume(home, bundles, digits, broker, fleet):
    import http.server

    data = bundles["v2"].read_bytes()
    seen_ranges: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            rng = self.headers.get("Range")
            seen_ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = data[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(seen_ranges) == 1:  # first attempt: the connection drops half way
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dev = "dev-http"
    agent, thread = _agent_in_process(home, broker.url, dev, digits.pub, infer_interval_s=0.02)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/digits-v2.edgebundle"
        fleet.deploy(dev, bundles["v2"], "dep-http", source={"type": "http", "url": url})
        r = fleet.wait_phase(dev, "dep-http")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
        assert seen_ranges[0] is None and seen_ranges[1] == f"bytes={len(data) // 2}-"
        assert not any(d == dev for d, _ in fleet.requests)  # nothing over MQTT blocks
    finally:
        agent.stop()
        thread.join(20)
        server.shutdown()


def test_update_with_username_password_and_acl(home, bundles, digits, tmp_path):
    acl = Path(__file__).resolve().parents[1] / "examples" / "mosquitto" / "acl.conf"
    dev = "dev-acl"
    b = start_broker(tmp_path / "mosq", prefer="mosquitto", fallback=False, acl_file=acl,
                     users={"fleet": "fleet-pw", dev: "dev-pw"})
    fleet = FleetStub(b.host, b.port, username="fleet", password="fleet-pw")
    agent, thread = _agent_in_process(home, b.url, dev, digits.pub, infer_interval_s=0.02,
                                      username=dev, password="dev-pw")
    try:
        fleet.deploy(dev, bundles["v2"], "dep-acl", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-acl")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
    finally:
        agent.stop()
        thread.join(20)
        fleet.close()
        b.stop()


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


@pytest.mark.parametrize("bad", ["-1", "nan", "soon"])
def test_serve_refuses_a_bad_probation_in_one_line(home, bad, capsys):
    with pytest.raises(SystemExit) as exited:
        agent_main(["--home", str(home), "serve", "--broker", "mqtt://127.0.0.1:1", "--device-id", "d", "--probation", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and err[-1].startswith("edge-agent serve: error: argument --probation:")


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
