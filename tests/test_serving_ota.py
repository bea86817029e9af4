"""Hot swap: a real `edge-agent serve --http` process on a real Mosquitto takes an OTA update while two
clients (tritonclient with binary tensors, and TF Serving JSON over httpx) send requests without pause.
Zero requests may fail, every answer must be the answering version's own, and the answers must move from
version 1 to 2 for good. Version 2 is the same ONNX model re-signed, or the model as a TFLite bundle (the
clients do not change: tensors are in the source model's layout for both formats)."""

from __future__ import annotations

import re
import threading
import time

import httpx
import numpy as np
import pytest

from edge_agent.bundle import TrustStore, verify_bundle
from edge_agent.pipeline.inputs import tensor_to_feed
from edge_agent.runtimes import load_session

from .ota_fixtures import BLOCK, broker, bundles, fleet, home, v1_home  # noqa: F401 - pytest fixtures, used by name
from .ota_helpers import AgentProcess, repack, wait_for
from .test_serving import tflite_bundle  # noqa: F401 - pytest fixture, used by name


def answers(bundle, pub, xs, folder) -> list[int]:  # noqa: ANN001
    """The bundle's own labels for xs, run in process."""
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=folder)
    session = load_session(vb.unpacked_to, vb.manifest, threads=1)
    spec = vb.manifest.inputs[0]
    return [int(np.argmax(session.run({spec.name: tensor_to_feed(x, spec)})[0])) for x in xs]


@pytest.mark.parametrize("v2_format", ["onnx", "tflite"])
def test_ota_switch_under_continuous_requests_fails_none(v2_format, home, bundles, tflite_bundle, digits, broker, fleet,
                                                         tmp_path):
    import tritonclient.http as triton

    def as_v2(m) -> None:  # noqa: ANN001
        m.version = 2

    v2 = bundles["v2"] if v2_format == "onnx" else \
        repack(tflite_bundle, tmp_path / "digits-tflite-v2.edgebundle", digits.key, digits.pub, as_v2)
    dev = f"dev-serve-{v2_format}"
    agent = AgentProcess(home, broker.url, dev, digits.pub, extra=["--http", "0"])
    stop = threading.Event()
    results: list[tuple[str, str, int, int]] = []  # (client, model version, input index, label)
    failures: list[str] = []
    xs = digits.x_test[:8].astype(np.float32)
    expected = {"1": answers(bundles["v1"], digits.pub, xs, tmp_path / "v1"), "2": answers(v2, digits.pub, xs, tmp_path / "v2")}
    try:
        url = wait_for(lambda: re.search(r"serving on (http://\S+)", agent.output()), what="endpoint up").group(1)
        with httpx.Client(base_url=url, timeout=30) as probe:
            wait_for(lambda: probe.get("/v2/models/digits/ready").status_code == 200, what="model ready")
            in_name = probe.get("/v2/models/digits").json()["inputs"][0]["name"]

        def triton_client() -> None:
            client = triton.InferenceServerClient(url=url.removeprefix("http://"))
            i = 0
            while not stop.is_set():
                try:
                    inp = triton.InferInput(in_name, [1, 1, 8, 8], "FP32")
                    inp.set_data_from_numpy(xs[i % len(xs)][None], binary_data=True)
                    res = client.infer("digits", [inp])
                    out = res.as_numpy(res.get_response()["outputs"][0]["name"])
                    results.append(("triton", res.get_response()["model_version"], i % len(xs), int(np.argmax(out))))
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    failures.append(f"triton: {exc}")
                i += 1

        def tf_client() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    try:
                        r = client.post("/v1/models/digits:predict", json={"instances": [xs[i % len(xs)].tolist()]})
                        if r.status_code != 200:
                            failures.append(f"tf: {r.status_code} {r.text}")
                        else:
                            version = client.get("/v1/models/digits").json()["model_version_status"][0]["version"]
                            results.append(("tf", version, i % len(xs), int(np.argmax(r.json()["predictions"][0]))))
                    except Exception as exc:  # noqa: BLE001 - every failure is counted (a dead thread would hide it)
                        failures.append(f"tf: {exc!r}")
                    i += 1

        threads = [threading.Thread(target=f, daemon=True) for f in (triton_client, tf_client)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results) > 40, what="requests on v1")
        fleet.deploy(dev, v2, "dep-serve", block_size=BLOCK)
        r = fleet.wait_phase(dev, "dep-serve")
        assert r.phase == "succeeded", r.last_error
        switched_at = len(results)
        try:
            wait_for(lambda: sum(1 for _, v, _, _ in results[switched_at:] if v == "2") > 40, what="requests on v2")
        except AssertionError as exc:  # say why: clients stuck or dead, requests failing, or still answered by v1
            raise AssertionError(
                f"{exc}: {len(results) - switched_at} answers since the switch, last {results[-4:]}; clients alive "
                f"{[t.is_alive() for t in threads]}; {len(failures)} failures {failures[-3:]}; agent: "
                f"{agent.output()[-3000:]}") from None
    finally:
        stop.set()
        time.sleep(0.2)
        code = agent.stop()
    assert not failures, failures[:3]
    assert code == 0, agent.output()[-2000:]
    assert all(label == expected[v][i] for c, v, i, label in results if c == "triton")  # the answering model's own
    # TF Serving's predict does not name the version that answered (the status is read just after): either's
    assert all(label in (expected["1"][i], expected["2"][i]) for c, _, i, label in results if c == "tf")
    versions = [v for c, v, _, _ in results if c == "triton"]
    assert versions[0] == "1" and versions[-1] == "2" and versions == sorted(versions)  # never back to the old model
    assert {c for c, _, _, _ in results} == {"triton", "tf"}
