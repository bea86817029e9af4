"""Requests of local apps are live inputs: a real `edge-agent serve --http` process (no camera), the fleet
server with its embedded Mosquitto, the `edge-fleet` CLI, and real HTTP clients (tritonclient with binary
tensors, TF Serving JSON over httpx) sending held-out digits while a shadow-gated deployment is pending.
The shadow run compares on the served requests, and drift is scored on them. Nothing simulated."""

from __future__ import annotations

import json
import re
import threading

import httpx
import numpy as np

from edge_fleet.cli import main as fleet_main

from .monitor_fixtures import white_digits_bundle  # noqa: F401 - fixture
from .ota_helpers import wait_for
from .test_ota_e2e import agent_status, start_agents, start_fleet, wait_known


class Clients:
    """Two apps sending digits without pause: tritonclient (KServe v2, binary) and TF Serving JSON."""

    def __init__(self, url: str, xs: np.ndarray, input_name: str) -> None:
        self.url, self.xs, self.input_name, self.stop, self.sent, self.failures = url, xs, input_name, threading.Event(), 0, []
        self.threads = [threading.Thread(target=fn, daemon=True) for fn in (self._triton, self._tf)]
        for t in self.threads:
            t.start()

    def _triton(self) -> None:
        import tritonclient.http as triton

        client = triton.InferenceServerClient(url=self.url.removeprefix("http://"))
        i = 0
        while not self.stop.is_set():
            inp = triton.InferInput(self.input_name, [1, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(self.xs[i % len(self.xs)][None], binary_data=True)
            try:
                client.infer("digits", [inp])
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - counted, asserted empty
                self.failures.append(f"triton: {exc}")
            i += 1
            self.stop.wait(0.004)

    def _tf(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 1
            while not self.stop.is_set():
                r = client.post("/v1/models/digits:predict", json={"instances": [self.xs[i % len(self.xs)].tolist()]})
                if r.status_code != 200:
                    self.failures.append(f"tf: {r.status_code} {r.text}")
                self.sent += 1
                i += 2
                self.stop.wait(0.004)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_served_requests_feed_the_shadow_gate_and_drift(tmp_path, digits, int8_bundle, int8_v2_bundle,
                                                       white_digits_bundle, capsys):
    server, reg = start_fleet(tmp_path, digits, [int8_bundle, int8_v2_bundle, white_digits_bundle], "mosquitto")
    agents = start_agents(tmp_path, server, digits, int8_bundle, ["app-1"], capsys,
                          extra={"app-1": ["--http", "0", "--drift-window", "100", "--probation", "0"]})
    agent = agents["app-1"]
    clients = None

    def deploy(ref: str) -> tuple[int, dict]:
        capsys.readouterr()
        rc = fleet_main(["deploy", ref, "--devices", "app-1", "--min-shadow-agreement", "0.9", "--shadow-frames", "60",
                         "--shadow-timeout", "90", "--wait", "--wait-timeout", "180", "--db", str(reg.db_path), "--json"])
        return rc, json.loads(capsys.readouterr().out)

    try:
        wait_known(reg, ["app-1"])
        url = wait_for(lambda: re.search(r"serving on (http://\S+)", agent.output()), what="endpoint up").group(1)
        with httpx.Client(base_url=url, timeout=30) as probe:
            wait_for(lambda: probe.get("/v2/models/digits/ready").status_code == 200, what="model ready")
            name = probe.get("/v2/models/digits").json()["inputs"][0]["name"]
        clients = Clients(url, digits.x_test[:200].astype(np.float32), name)

        # v3 passes its self-test and health check but answers the apps' digits differently: never switched to
        rc, rollout = deploy("digits:3")
        assert rc == 7, rollout  # halted
        shadow = rollout["devices"][0]["shadow"]
        assert shadow["verdict"] == "failed" and shadow["agreement"] < 0.9, shadow
        assert shadow["frames"] >= 1 and shadow["offered"] >= shadow["frames"], shadow  # served requests were compared
        assert shadow["active_p50_ms"] > 0 and shadow["candidate_p50_ms"] > 0
        assert agent_status(agent.home, capsys)["version"] == 1

        # v2 (the same network, converted again) agrees with v1 on the apps' requests: switched to
        rc, rollout = deploy("digits:2")
        assert rc == 0, rollout
        shadow = rollout["devices"][0]["shadow"]
        assert shadow["verdict"] == "passed" and shadow["frames"] == 60 and shadow["agreement"] >= 0.9, shadow
        assert agent_status(agent.home, capsys)["version"] == 2

        # drift of the served inputs against v2's reference: held-out digits are fine...
        wait_for(lambda: (reg.device("app-1").drift or {}).get("state") == "ok", timeout=90,
                 what="drift ok on held-out digits sent by the apps")
        assert reg.device("app-1").drift["model"] == "digits:2"
        # ...the apps' camera moves to white paper (inverted digits): the fleet sees the drift state
        clients.close()
        assert clients.failures == [] and clients.sent > 120  # no request failed across two shadow runs and a switch
        clients = Clients(url, np.ascontiguousarray(1.0 - digits.x_test[:200]).astype(np.float32), name)
        dev = wait_for(lambda: (d := reg.device("app-1")) and (d.drift or {}).get("state") == "drift" and d,
                       timeout=90, what="drift raised by served requests")
        assert dev.drift["psi"] > 0.25 and dev.drift["window"] == 100
        clients.close()
        assert clients.failures == []
    finally:
        if clients is not None:
            clients.close()
        agent.stop()
        server.stop()
        reg.close()


def test_served_images_and_tensors_are_prepared_for_the_new_model(digits, int8_bundle, white_digits_bundle, tmp_path):
    """In process, the serving core's observers feed a ShadowRun directly: PNG requests are decoded and
    preprocessed again for the new model, tensor requests converted from the client's tensors, and the
    active model's raw outputs postprocessed by the shadow worker. The same model agrees on every
    request (nothing lost in the replay); v3 (white-background digits) does not."""
    import cv2

    from edge_agent.bundle import TrustStore, verify_bundle
    from edge_agent.monitor.shadow import ShadowRun
    from edge_agent.ota.protocol import ShadowGate
    from edge_agent.runtimes import load_session
    from edge_agent.serving import HttpOptions, ModelHolder, ServedModel, start_serving, stop_serving

    def load(bundle):  # noqa: ANN001, ANN202
        vb = verify_bundle(bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / bundle.stem)
        return vb.manifest, load_session(vb.unpacked_to, vb.manifest, threads=1)

    (m1, s1), (m3, s3) = load(int8_bundle), load(white_digits_bundle)
    server = start_serving(ModelHolder(ServedModel(m1, s1)), options=HttpOptions(port=0))
    xs = digits.x_test[:40].astype(np.float32)
    pngs = [cv2.imencode(".png", np.clip(np.rint(x[0] * 255), 0, 255).astype(np.uint8))[1].tobytes() for x in xs]
    try:
        for candidate, manifest, verdict in ((s1, m1, "passed"), (s3, m3, "failed")):
            run = ShadowRun(candidate, manifest, ShadowGate(min_agreement=0.9, frames=40, timeout_s=60.0))
            server.service.add_observer(run.observe)
            out: list = []
            t = threading.Thread(target=lambda: out.append(run.run()))  # noqa: B023 - joined in this iteration
            t.start()
            with httpx.Client(base_url=server.url, timeout=30) as client:
                i = 0
                while t.is_alive() and i < 2000:
                    if i % 2:
                        r = client.post("/v1/models/digits:predict", content=pngs[i % 40],
                                        headers={"Content-Type": "image/png"})
                    else:
                        r = client.post("/v1/models/digits:predict", json={"instances": [xs[i % 40].tolist()]})
                    assert r.status_code == 200, r.text
                    i += 1
            t.join(30)
            server.service.remove_observer(run.observe)
            report = out[0]
            assert report.verdict == verdict, report
            if verdict == "passed":
                assert report.agreement == 1.0 and report.frames == 40 and run.errors == 0
            else:
                assert report.agreement < 0.9 and run.errors == 0  # it answered every request, differently
    finally:
        stop_serving(server)
        s1.close()
        s3.close()
