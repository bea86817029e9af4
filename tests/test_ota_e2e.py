"""Fleet server + real `edge-agent serve` processes, end to end, on the embedded broker.

Nothing simulated: the fleet server starts its own broker, the agents are subprocesses that
download bundles through the block protocol, verify, install into their inactive slot,
health-check and switch; the rollout is driven with the `edge-fleet` CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.bundle import TrustStore
from edge_agent.cli import main as agent_main
from edge_fleet.cli import main as fleet_main
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import Registry, open_registry
from edge_fleet.server import FleetServer
from .ota_helpers import AgentProcess, wait_for, with_login


def agent_status(home: Path, capsys) -> dict:
    capsys.readouterr()
    assert agent_main(["--home", str(home), "status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def start_fleet(tmp_path: Path, digits, bundles: list[Path], embedded: str) -> tuple[FleetServer, Registry]:
    reg = open_registry(tmp_path / "fleet.db")
    trust = TrustStore.from_paths([digits.pub])
    for b in bundles:
        publish_bundle(reg, b, trust)
    server = FleetServer(reg, None, embedded=embedded, tick=0.05).start()
    return server, reg


def start_agents(tmp_path: Path, server: FleetServer, digits, v1: Path, ids: list[str], capsys,
                 extra: dict[str, list[str]] | None = None) -> dict[str, AgentProcess]:
    agents = {}
    for device_id in ids:
        home = tmp_path / device_id
        rc = agent_main(["--home", str(home), "install", str(v1), "--trust", str(digits.pub), "--profile", "raspberry-pi-4"])
        assert rc == 0, capsys.readouterr().err
        agents[device_id] = AgentProcess(home, with_login(server.url, *server.add_device(device_id)), device_id, digits.pub, extra=(extra or {}).get(device_id))
    return agents


def wait_known(reg: Registry, ids: list[str]) -> None:
    def ready():
        devs = [reg.device(i) for i in ids]
        return all(d and d.profile and d.current and d.presence == "online" for d in devs)
    wait_for(ready, what="agents to report to the fleet")


@pytest.mark.parametrize("embedded", ["mosquitto", "amqtt"])
def test_staged_rollout_updates_real_agents(tmp_path, digits, int8_bundle, int8_v2_bundle, capsys, embedded):
    ids = ["pi-a", "pi-b", "pi-c"] if embedded == "mosquitto" else ["pi-a"]
    server, reg = start_fleet(tmp_path, digits, [int8_bundle, int8_v2_bundle], embedded)
    agents = start_agents(tmp_path, server, digits, int8_bundle, ids, capsys)
    try:
        assert server.broker.kind == embedded
        wait_known(reg, ids)
        capsys.readouterr()
        rc = fleet_main(["deploy", "digits:2", "--devices", ",".join(ids), "--stages", "34,67,100", "--stage-timeout", "60",
                         "--wait", "--wait-timeout", "120", "--db", str(reg.db_path), "--json"])
        out = capsys.readouterr().out
        assert rc == 0, out
        rollout = json.loads(out)
        assert rollout["status"] == "succeeded"
        for device_id, agent in agents.items():
            s = agent_status(agent.home, capsys)
            assert s["version"] == 2 and s["phase"] == "succeeded", s
            dev = reg.device(device_id)
            assert dev.current.version == 2 and dev.phase == "succeeded"
        # the agents kept serving inference through the update, without errors
        wait_for(lambda: all(reg.device(i).inferences for i in ids), what="telemetry")
        assert all(reg.device(i).errors == 0 for i in ids)
        capsys.readouterr()
        assert fleet_main(["status", "--db", str(reg.db_path), "--json"]) == 0
        status = {d["id"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
        assert all(status[i]["version"] == 2 for i in ids)
    finally:
        for a in agents.values():
            a.stop()
        server.stop()
        reg.close()


def test_failing_health_check_halts_rollout_and_rolls_back(tmp_path, digits, int8_bundle, int8_v2_bundle, capsys):
    ids = ["pi-a", "pi-b", "pi-c"]
    server, reg = start_fleet(tmp_path, digits, [int8_bundle, int8_v2_bundle], "mosquitto")
    # pi-b's latency budget is impossible: any new model fails its health check there.
    agents = start_agents(tmp_path, server, digits, int8_bundle, ids, capsys,
                          extra={"pi-b": ["--latency-budget-ms", "0.000001"]})
    try:
        wait_known(reg, ids)
        capsys.readouterr()
        # stages of one device each: pi-a (healthy, switches), then pi-b (fails), then pi-c
        rc = fleet_main(["deploy", "digits:2", "--devices", ",".join(ids), "--stages", "33,66,100", "--stage-timeout", "60",
                         "--max-failures", "0", "--wait", "--wait-timeout", "120", "--db", str(reg.db_path), "--json"])
        out = capsys.readouterr().out
        assert rc == 7, out  # halted
        rollout = json.loads(out)
        outcome = {d["device_id"]: d for d in rollout["devices"]}
        assert rollout["status"] == "halted" and rollout["stages"] == [1, 2, 3]
        assert outcome["pi-a"]["status"] == "rolled_back"
        assert outcome["pi-b"]["status"] == "failed" and "health_check" in outcome["pi-b"]["reason"]
        assert outcome["pi-c"]["status"] == "not_started" and outcome["pi-c"]["sent_at"] is None
        # pi-a had switched to v2 in stage 1; the fleet sent it back to v1 (an explicit, allowed downgrade)
        wait_for(lambda: agent_status(agents["pi-a"].home, capsys)["version"] == 1, what="pi-a rolled back")
        slots = agent_status(agents["pi-a"].home, capsys)["slots"]
        assert {info["version"] for info in slots.values()} == {1, 2}  # v2 was really installed there
        # pi-b never switched: its health check failed and it stayed on v1
        assert agent_status(agents["pi-b"].home, capsys)["version"] == 1
        # pi-c was in a later stage: never touched
        c = agent_status(agents["pi-c"].home, capsys)
        assert c["version"] == 1 and c["target"]["version"] == 1  # its last job is the side-loaded v1
    finally:
        for a in agents.values():
            a.stop()
        server.stop()
        reg.close()


def test_rollout_with_http_source(tmp_path, digits, int8_bundle, int8_v2_bundle, capsys):
    """`deploy --source-url`: devices fetch the bundle over HTTP (e.g. a CDN) instead of MQTT blocks."""
    import http.server
    import threading

    server, reg = start_fleet(tmp_path, digits, [int8_bundle, int8_v2_bundle], "mosquitto")
    served: list[str] = []
    store = reg.store_dir

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = store / self.path.lstrip("/")
            if not path.is_file() or "/" in self.path.lstrip("/"):
                self.send_error(404)
                return
            data = path.read_bytes()
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    agents = start_agents(tmp_path, server, digits, int8_bundle, ["pi-http"], capsys)
    try:
        wait_known(reg, ["pi-http"])
        capsys.readouterr()
        template = f"http://127.0.0.1:{http_server.server_port}/{{sha256}}.edgebundle"
        rc = fleet_main(["deploy", "digits:2", "--devices", "pi-http", "--source-url", template, "--wait",
                         "--wait-timeout", "120", "--db", str(reg.db_path), "--json"])
        assert rc == 0, capsys.readouterr().out
        v2_sha = next(b for b in reg.bundles_named("digits", 2)).sha256
        assert served == [f"/{v2_sha}.edgebundle"]  # fetched over HTTP, exactly once
        assert agent_status(agents["pi-http"].home, capsys)["version"] == 2
        # a template that does not make an http(s) URL is refused before anything is sent
        rc = fleet_main(["deploy", "digits:1", "--devices", "pi-http", "--source-url", "ftp://x/{sha256}",
                         "--db", str(reg.db_path)])
        assert rc != 0 and "http(s) URL" in capsys.readouterr().err
    finally:
        for a in agents.values():
            a.stop()
        http_server.shutdown()
        server.stop()
        reg.close()


def test_serve_runs_the_camera_pipeline_across_an_update(tmp_path, digits, int8_bundle, int8_v2_bundle, capsys):
    """`edge-agent serve --source VIDEO`: frames are classified by the current model, before and
    after an OTA update, with no failed inference across the swap."""
    import cv2
    import numpy as np

    video = tmp_path / "digits.avi"
    n = 60
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 64))
    for img in digits.x_test[:n]:
        gray = cv2.resize(np.clip(img[0] * 255, 0, 255).astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    writer.release()
    results = tmp_path / "results.jsonl"
    server, reg = start_fleet(tmp_path, digits, [int8_bundle, int8_v2_bundle], "mosquitto")
    agents = start_agents(tmp_path, server, digits, int8_bundle, ["cam-1"], capsys,
                          extra={"cam-1": ["--source", str(video), "--results", str(results)]})

    def records():
        return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []

    try:
        wait_known(reg, ["cam-1"])
        wait_for(lambda: len(records()) >= n, what="first pass over the video")
        capsys.readouterr()
        rc = fleet_main(["deploy", "digits:2", "--devices", "cam-1", "--wait", "--wait-timeout", "120",
                         "--db", str(reg.db_path), "--json"])
        assert rc == 0, capsys.readouterr().out
        wait_for(lambda: sum(r["version"] == 2 for r in records()) >= n, what="frames classified by v2")
        rs = records()
        assert {r["version"] for r in rs} == {1, 2} and all(r["kind"] == "classification" for r in rs)
        # frames are the video's digits: labels agree with the truth (MJPG is lossy: allow a little)
        correct = [r["label"] == int(digits.y_test[r["frame"] % n]) for r in rs]
        assert sum(correct) / len(correct) >= 0.85
        wait_for(lambda: ((d := reg.device("cam-1")) is not None and d.inferences or 0) > 0, what="telemetry")
        dev = reg.device("cam-1")
        assert dev.errors == 0, dev
    finally:
        for a in agents.values():
            a.stop()
        server.stop()
        reg.close()
