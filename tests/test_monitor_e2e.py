"""Shadow gating and drift end to end: the fleet server with its embedded Mosquitto, real `edge-agent
serve --source VIDEO` processes, and the `edge-fleet` CLI. Nothing simulated."""

from __future__ import annotations

import json
import re
import urllib.request

from edge_fleet.cli import main as fleet_main

from .monitor_fixtures import digits_video, scene_change_video, white_digits_bundle  # noqa: F401 - fixtures
from .ota_helpers import wait_for
from .test_ota_e2e import agent_status, start_agents, start_fleet, wait_known

MONITOR = ["--drift-window", "100", "--probation", "0"]


def test_a_model_disagreeing_in_shadow_halts_the_rollout_at_its_first_stage(tmp_path, digits, int8_bundle,
                                                                            white_digits_bundle, digits_video, capsys):
    ids = ["cam-a", "cam-b"]
    server, reg = start_fleet(tmp_path, digits, [int8_bundle, white_digits_bundle], "mosquitto")
    extra = {i: ["--source", str(digits_video), *MONITOR] for i in ids}
    agents = start_agents(tmp_path, server, digits, int8_bundle, ids, capsys, extra=extra)
    try:
        wait_known(reg, ids)
        capsys.readouterr()
        rc = fleet_main(["deploy", "digits:3", "--devices", ",".join(ids), "--stages", "50,100", "--stage-timeout",
                         "120", "--min-shadow-agreement", "0.9", "--shadow-frames", "60", "--shadow-timeout", "60", "--wait",
                         "--wait-timeout",
                         "180", "--db", str(reg.db_path), "--json"])
        out = capsys.readouterr().out
        assert rc == 7, out  # halted
        rollout = json.loads(out)
        assert rollout["shadow"] == {"min_agreement": 0.9, "frames": 60, "timeout_s": 60.0}
        outcome = {d["device_id"]: d for d in rollout["devices"]}
        first, second = sorted(ids, key=lambda i: outcome[i]["stage"])
        assert outcome[first]["status"] == "failed" and "shadow failed" in outcome[first]["reason"]
        assert outcome[first]["shadow"]["verdict"] == "failed" and outcome[first]["shadow"]["agreement"] < 0.9
        assert outcome[second]["status"] == "not_started" and outcome[second]["sent_at"] is None
        stage1 = rollout["stage_progress"][0]["shadow"]
        assert stage1["verdicts"] == {"failed": 1} and stage1["agreement_min"] < 0.9 and stage1["min_agreement"] == 0.9
        assert stage1["active_p50_ms"] > 0 and stage1["candidate_p50_ms"] > 0
        assert rollout["stage_progress"][1]["shadow"] is None
        for i in ids:  # nobody switched: both agents still serve v1
            assert agent_status(agents[i].home, capsys)["version"] == 1
        # the operator's views: per-stage shadow figures, per-device drift of the live frames (held-out digits: ok)
        capsys.readouterr()
        assert fleet_main(["rollouts", rollout["id"], "--db", str(reg.db_path)]) == 0
        text = capsys.readouterr().out
        assert re.search(r"stage 1 shadow: 1 failed; agreement min 0\.\d+ mean 0\.\d+ \(minimum 0\.9\) over \d+ frames",
                         text), text
        wait_for(lambda: all((reg.device(i).drift or {}).get("state") == "ok" for i in ids), timeout=90,
                 what="drift state ok on held-out digits")
        assert fleet_main(["status", "--db", str(reg.db_path)]) == 0
        text = capsys.readouterr().out
        assert "DRIFT" in text.splitlines()[0] and all(re.search(rf"{i} .* ok \(\S+ PSI [\d.]+\)", text) for i in ids), text
        # ...and the shadow figures of the halted rollout's stages
        assert re.search(rf"rollout {rollout['id']} digits:3 halted stage 1 shadow: 1 failed; agreement min 0\.\d+",
                         text, re.IGNORECASE), text
    finally:
        for a in agents.values():
            a.stop()
        server.stop()
        reg.close()


def test_a_camera_whose_scene_changes_raises_drift_in_the_fleet_and_on_metrics(tmp_path, digits, int8_bundle,
                                                                              scene_change_video, capsys):
    server, reg = start_fleet(tmp_path, digits, [int8_bundle], "mosquitto")
    agents = start_agents(tmp_path, server, digits, int8_bundle, ["cam-s"], capsys,
                          extra={"cam-s": ["--source", str(scene_change_video), *MONITOR, "--metrics-port", "0"]})
    agent = agents["cam-s"]
    try:
        wait_known(reg, ["cam-s"])
        dev = wait_for(lambda: (d := reg.device("cam-s")) and (d.drift or {}).get("state") == "drift" and d,
                       timeout=90, what="the drift state in the fleet")
        assert dev.drift["psi"] > 0.25 and dev.drift["worst"].startswith(("input.", "output."))
        assert dev.drift["model"] == "digits:1" and dev.drift["window"] == 100
        capsys.readouterr()
        assert fleet_main(["status", "--db", str(reg.db_path), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)["devices"][0]
        assert status["drift"]["state"] == "drift"
        url = wait_for(lambda: re.search(r"metrics on (http://\S+)/metrics", agent.output()), what="metrics URL").group(1)
        body = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert "edgekit_drift_detected 1.0" in body, body
        assert re.search(r'edgekit_drift_psi\{feature="input.brightness"\} [\d.]+', body)
    finally:
        agent.stop()
        server.stop()
        reg.close()
