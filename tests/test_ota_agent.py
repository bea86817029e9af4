"""OTA agent tests: real Mosquitto, real `edge-agent` processes, real bundles and ONNX Runtime.

The fleet side is played by tests/ota_helpers.FleetStub (a real MQTT peer). What happens when
things go wrong after an install (probation, crash loops, old state files) is in test_ota_recovery.py.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from edge_agent.cli import main as agent_main
from edge_agent.home import AgentHome
from edge_agent.ota.slots import Slots
from edge_agent.ota.transfer import MAX_REPAIRS
from edge_fleet.broker import start_broker

from .ota_fixtures import BLOCK, agent_in_process, bundles, broker, cli, fleet, home, install, status, v1_home  # noqa: F401 - pytest fixtures, used by name
from .ota_helpers import AgentProcess, FleetStub, wait_for



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
        # junk (the corrupt block is stored, not ignored: installing's signed check fails, a re-check finds it)
        assert after.extra["ignored_messages"] >= len(junk)
        assert agent.proc.poll() is None
        agent.proc.send_signal(signal.SIGUSR1)  # an operator asking where a stuck agent is: stacks, and it goes on
        wait_for(lambda: "most recent call first" in agent.output() and "agent.py" in agent.output(), what="stacks")
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
    assert fleet.presence.get(dev) == "offline"


def test_a_block_corrupt_every_time_fails_the_update_and_keeps_the_working_model(home, bundles, digits, broker, fleet):
    """The block is fetched again MAX_REPAIRS times, then the update fails (HashMismatch, exit 14): nothing of it
    is installed, the device keeps serving v1, and the same bundle installs once the block comes through."""
    dev = "dev-bad-block"
    agent = AgentProcess(home, broker.url, dev, digits.pub)
    try:
        first = wait_for(lambda: fleet.last_telemetry(dev), what="telemetry")
        assert first.model.version == 1
        fleet.corrupt_always = {2}
        fleet.deploy(dev, bundles["v2"], "dep-bad", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-bad")
        assert r.phase == "failed" and "SHA-256" in (r.last_error or ""), r
        assert fleet.served.count(2) == MAX_REPAIRS + 1
        assert r.current.version == 1
        after = wait_for(lambda: (t := fleet.last_telemetry(dev)) and t.inferences > first.inferences and t,
                         what="telemetry after the failure")
        assert after.model.version == 1 and after.errors == 0
        fleet.corrupt_always = set()
        fleet.deploy(dev, bundles["v2"], "dep-good", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-good")
        assert r.phase == "succeeded" and r.current.version == 2, r.last_error
    finally:
        assert agent.stop() == 0


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


def test_resume_after_broker_restart_refetches_no_completed_block(home, bundles, digits, tmp_path):
    # a broker whose message limit (20 KiB) is below the bundle size: only blocks can carry it
    b = start_broker(tmp_path / "mosq", prefer="mosquitto", fallback=False, max_message_mb=0.02)
    fleet = FleetStub(b.host, b.port)
    dev = "dev-restart"
    agent, thread = agent_in_process(home, b.url, dev, digits.pub, infer_interval_s=0.02, block_retry_s=1.0)
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
    agent, thread = agent_in_process(home, broker.url, dev, digits.pub, infer_interval_s=0.0)
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
    agent, thread = agent_in_process(home, broker.url, dev, digits.pub, infer_interval_s=0.02)
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
    agent, thread = agent_in_process(home, b.url, dev, digits.pub, infer_interval_s=0.02,
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


@pytest.mark.parametrize("bad", ["-1", "nan", "soon"])
def test_serve_refuses_a_bad_probation_in_one_line(home, bad, capsys):
    with pytest.raises(SystemExit) as exited:
        agent_main(["--home", str(home), "serve", "--broker", "mqtt://127.0.0.1:1", "--device-id", "d", "--probation", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and err[-1].startswith("edge-agent serve: error: argument --probation:")
