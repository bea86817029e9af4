"""Drift as a user meets it with the real CLIs: edge-convert bundles (TFLite of an NCHW model, a classifier ending
in its own softmax) and `edge-agent run --source` on videos, checked against what the docs promise."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from edge_agent.bundle import TrustStore, verify_bundle

from .conftest import convert_args
from .monitor_fixtures import digits_video  # noqa: F401 - fixtures
from .ota_fixtures import BLOCK, broker, bundles, fleet, home, v1_home  # noqa: F401 - fixtures
from .test_monitor_drift import WINDOW, photo_crops


def test_a_tflite_bundle_of_an_nchw_model_does_not_drift_on_the_scenes_it_was_converted_on(digits, tmp_path, capsys):
    """edge-convert --format tflite transposes an ONNX image model's input to NHWC (source NCHW) and records the
    reference on the NCHW data. Every k-th value of an NHWC frame (k a multiple of 3 at 32x32, 64x64, 224x224...)
    is one channel: a video of held-out crops of the calibration photos was `drift` (input.brightness PSI 1.87)."""
    import torch

    from converter.cli import main as convert
    from edge_agent.cli import main

    from .camera_helpers import write_video

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(tmp_path / "rgb.onnx"), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    np.savez(tmp_path / "calib.npz", image=photo_crops(200, 0, 32))
    out = tmp_path / "rgb.edgebundle"
    assert convert(["--quiet", "convert", str(tmp_path / "rgb.onnx"), "--profile", "raspberry-pi-4", "--format",
                    "tflite", "--precision", "fp32", "--calibration", str(tmp_path / "calib.npz"), "--scale",
                    str(1 / 255), "--key", str(digits.key), "--out", str(out), "--bench-runs", "0"]) == 0
    spec = verify_bundle(out, TrustStore.from_paths([digits.pub])).manifest.inputs[0]
    assert (spec.layout, spec.source_layout) == ("NHWC", "NCHW")
    frames = [cv2.cvtColor(np.rint(f.transpose(1, 2, 0) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
              for f in photo_crops(150, 1, 32)]
    video = write_video(tmp_path / "held-out.avi", frames)
    capsys.readouterr()
    assert main(["run", str(out), "--source", str(video), "--trust", str(digits.pub), "--output", "none",
                 "--drift-window", str(WINDOW), "--drift-budget", "all", "--json"]) == 0
    drift = json.loads(capsys.readouterr().out)["drift"]
    assert drift["state"] == "ok" and drift["psi"]["input.brightness"] < 0.25, drift


def test_edge_agent_run_says_why_a_file_left_the_drift_window_warming_up(int8_bundle, digits, digits_video, capsys):
    """The default budget observes a tiny model's frames one in many: the summary said `drift warming_up` after
    120 frames of a 100-frame window, and not that most were left out nor how to observe them all."""
    from edge_agent.cli import main

    assert main(["run", str(int8_bundle), "--source", str(digits_video), "--trust", str(digits.pub), "--output",
                 "none", "--drift-window", "100"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.search(r"drift warming_up \((\d+) of --drift-window 100 frames observed; (\d+) not sampled within "
                      r"--drift-budget, `all` observes every frame\)", summary)
    assert found and int(found[1]) + int(found[2]) == 120, summary


def test_a_classifier_ending_in_softmax_is_served_its_own_probabilities_and_does_not_drift(digits, digits_video,
                                                                                            tmp_path, capsys):
    """Its int8 probabilities (steps of 1/256) miss a sum of 1 by more than the agent's 1e-3, so the agent took
    them for logits and softmaxed them again: score 0.23 where the model said 0.97, and `drift` (output.confidence
    PSI 13) on held-out digits against the float model's reference. The converter now records softmax off."""
    import torch

    from converter.cli import main as convert
    from edge_agent.cli import main

    onnx = tmp_path / "softmax.onnx"
    net = torch.nn.Sequential(digits.model, torch.nn.Softmax(dim=1)).eval()
    torch.onnx.export(net, torch.from_numpy(digits.x_test[:1]), str(onnx), input_names=["input"],
                      output_names=["probs"], dynamo=False)
    out = tmp_path / "softmax.edgebundle"
    assert convert([str(onnx) if a == str(digits.onnx) else a for a in convert_args(digits, out)]) == 0
    assert verify_bundle(out, TrustStore.from_paths([digits.pub])).manifest.postprocess.softmax is False
    np.save(tmp_path / "x.npy", digits.x_test[0])
    capsys.readouterr()
    assert main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(digits.pub), "--json"]) == 0
    with torch.no_grad():
        want = float(net(torch.from_numpy(digits.x_test[:1])).max())
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(want, abs=0.02)
    assert main(["run", str(out), "--source", str(digits_video), "--trust", str(digits.pub), "--output", "none",
                 "--drift-window", str(WINDOW), "--drift-budget", "all", "--json"]) == 0
    drift = json.loads(capsys.readouterr().out)["drift"]
    assert drift["state"] == "ok" and drift["psi"]["output.confidence"] < 0.25, drift


def test_the_fleet_sees_the_drift_figures_move_not_only_the_first_of_each_state(home, digits, broker, fleet,
                                                                                digits_video):
    """The reported state carried drift only when the state changed: the fleet's DRIFT column kept `warming_up
    1/100` until the window was full and then the PSI of the first score for as long as the state stayed `ok`.
    A real agent on a looping video of digits, a real Mosquitto; the fleet side is the test's MQTT client."""
    from .ota_fixtures import agent_in_process
    from .ota_helpers import wait_for

    agent, thread = agent_in_process(home, broker.url, "cam-f", digits.pub, source=str(digits_video),
                                     probation_s=0, drift_window=WINDOW)
    try:
        def drifts() -> list[dict]:
            with fleet.lock:
                return [r.drift for r in fleet.reported.get("cam-f", []) if r.drift]

        first_ok = wait_for(lambda: next((d for d in drifts() if d["state"] == "ok"), None), 60, "drift ok")
        warming = {d["frames"] for d in drifts() if d["state"] == "warming_up"}
        assert len(warming) > 1, warming  # the fleet saw the window fill
        wait_for(lambda: any(d["state"] == "ok" and d["psi"] != first_ok["psi"] for d in drifts()), 60,
                 f"a newer PSI than the first ok's {first_ok['psi']} in the reported state")
    finally:
        agent.stop()
        thread.join(20)


def _live_model(bundle, pub, folder):  # noqa: ANN001, ANN202 - Path, Path, Path -> LiveModel
    """A bundle verified, unpacked and loaded as the agent serves it."""
    from edge_agent.ota.live import LiveModel
    from edge_agent.ota.protocol import BundleRef
    from edge_agent.runtimes import load_session

    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=folder)
    m = vb.manifest
    return LiveModel("a", BundleRef(m.name, m.version, "0" * 64), m, load_session(vb.unpacked_to, m, threads=1), None,
                     bundle_dir=vb.unpacked_to)


def test_drift_and_its_not_sampled_count_restart_when_the_served_model_switches(bundles, digits, tmp_path):
    """`live.not_sampled` counted the whole process's left-out inputs beside a window of the new model's; and the
    old model's window stood for the new one until its first input. Both belong to the served model now."""
    from edge_agent.monitor.budget import CpuBudget
    from edge_agent.monitor.drift import DriftConfig
    from edge_agent.monitor.watch import DriftWatch
    from edge_agent.ota.live import InferenceLoop
    from edge_agent.pipeline.inputs import tensor_to_feed
    from edge_agent.pipeline.observe import LiveSample

    loop = InferenceLoop()  # not started: its swaps and their listeners, as the agent's
    watch = DriftWatch(DriftConfig(window=50), CpuBudget(share=0.0, burst_s=0.0))  # observes one input, then none
    loop.swap_listeners.append(watch.follow)
    v1, v2 = _live_model(bundles["v1"], digits.pub, tmp_path / "v1"), _live_model(bundles["v2"], digits.pub, tmp_path / "v2")

    def sample(model, x):  # noqa: ANN001, ANN202
        spec = model.manifest.inputs[0]
        feeds = {spec.name: tensor_to_feed(x.astype(np.float32), spec)}
        return LiveSample(None, model, feeds, model.session.run(feeds), 0.1)

    loop.swap(v1)
    assert watch.snapshot() is None  # no live input yet: nothing is watched, nothing reported
    for x in digits.x_test[:20]:
        watch(sample(v1, x))
    s1 = watch.snapshot()
    assert (s1.model, s1.frames, s1.live["not_sampled"]) == ("digits:1", 1, 19)
    loop.swap(v2)  # an OTA switch; no input of v2 yet
    s2 = watch.snapshot()
    assert (s2.model, s2.state, s2.frames, s2.live["not_sampled"]) == ("digits:2", "warming_up", 0, 0)
    watch(sample(v1, digits.x_test[0]))  # a request still finishing on v1: not v2's
    assert watch.snapshot().live["not_sampled"] == 0 and watch.snapshot().model == "digits:2"
    loop.swap(None)
    assert watch.snapshot() is None


def test_after_an_ota_switch_the_fleet_sees_the_new_models_drift_not_the_old_ones(home, digits, bundles, broker, fleet):
    """A real `edge-agent serve --http` process: apps send digits to v1 until its drift is scored, then stop; an
    OTA update switches to v2. The reported state that says `succeeded` on v2 carried v1's drift state (`ok ...
    digits:1`) until v2 answered its first request; it carries v2's own window now."""
    import httpx

    from .ota_helpers import AgentProcess, wait_for

    dev = "cam-switch"
    agent = AgentProcess(home, broker.url, dev, digits.pub,
                         extra=["--http", "0", "--drift-window", "50", "--probation", "0"])
    try:
        url = wait_for(lambda: re.search(r"serving on (http://\S+)", agent.output()), what="endpoint up").group(1)
        with httpx.Client(base_url=url, timeout=30) as http:
            wait_for(lambda: http.get("/v2/models/digits/ready").status_code == 200, what="v1 served")
            sent = iter(range(10**6))

            def scored() -> dict | None:
                for i in (next(sent) % len(digits.x_test) for _ in range(20)):  # held-out digits, in turn
                    r = http.post("/v1/models/digits:predict", json={"instances": [digits.x_test[i].tolist()]})
                    assert r.status_code == 200, r.text
                last = fleet.last_reported(dev)
                return last.drift if last and last.drift and last.drift["state"] in ("ok", "drift") else None

            before = wait_for(scored, what="v1's drift scored in the reported state")
        assert before["model"] == "digits:1"
        fleet.deploy(dev, bundles["v2"], "dep-v2", block_size=BLOCK)
        done = fleet.wait_phase(dev, "dep-v2", ("succeeded",))
        assert done.current.version == 2
        assert (done.drift["model"], done.drift["state"], done.drift["frames"]) == ("digits:2", "warming_up", 0), done.drift
    finally:
        agent.stop()
