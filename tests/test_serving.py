"""The local inference endpoint (edge_agent.serving) with clients no one here wrote: tritonclient (KServe v2,
binary tensors), httpx with TF Serving's documented JSON, and curl; real bundles on ONNX Runtime and LiteRT.

Answers must equal `edge-agent run`'s on the same inputs. Hot swap under OTA: tests/test_serving_ota.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import read_manifest_unverified
from edge_agent.cli import main as agent_main
from edge_agent.pipeline.postprocess import softmax

from .conftest import convert_args
from .serving_helpers import ServeModelProcess

N_DIGITS = 4


@pytest.fixture(scope="module")
def tflite_bundle(digits, tmp_path_factory) -> Path:
    """The digits CNN as a full-integer TFLite bundle (onnx2tf turned it NHWC)."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("serving-tflite") / "digits-tflite.edgebundle"
    assert main(convert_args(digits, out, "raspberry-pi-4", "--format", "tflite", "--precision", "int8-static")) == 0
    return out


@pytest.fixture(scope="module")
def inputs(digits, tmp_path_factory) -> list[tuple[np.ndarray, Path, Path]]:
    """(array in the source layout without batch, .npy file, .png file) for a few held-out digits."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("serving-inputs")
    out = []
    for k in range(N_DIGITS):
        x = (np.rint(digits.x_test[k] * 255) / 255).astype(np.float32)  # (1, 8, 8): what a PNG can hold too
        npy, png = folder / f"d{k}.npy", folder / f"d{k}.png"
        np.save(npy, x)
        Image.fromarray(np.rint(x[0] * 255).astype(np.uint8), mode="L").save(png)
        out.append((x, npy, png))
    return out


def run_json(capsys, home: Path, bundle: Path, pub: Path, files: list[Path]) -> list[dict]:
    capsys.readouterr()
    assert agent_main(["--home", str(home), "run", str(bundle), *map(str, files), "--trust", str(pub), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    return result if isinstance(result, list) else [result]


def same_answer(served: dict, cli: dict) -> None:
    assert {k: served[k] for k in ("label", "name", "score", "top_k")} == {k: cli[k] for k in ("label", "name", "score", "top_k")}


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_clients_get_the_same_answers_as_edge_agent_run(fmt, digits, int8_bundle, tflite_bundle, inputs, capsys, tmp_path):
    import httpx
    import tritonclient.http as triton

    bundle = int8_bundle if fmt == "onnx" else tflite_bundle
    manifest = read_manifest_unverified(bundle)
    in_name, out_name = manifest.inputs[0].name, manifest.outputs[0].name
    by_array = run_json(capsys, tmp_path, bundle, digits.pub, [npy for _, npy, _ in inputs])
    by_image = run_json(capsys, tmp_path, bundle, digits.pub, [png for _, _, png in inputs])

    server = ServeModelProcess(bundle, digits.pub, tmp_path / "home")
    try:
        client = triton.InferenceServerClient(url=server.host_port)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [1, 1, 8, 8]  # source layout on both formats
        assert meta["inputs"][0]["datatype"] == "FP32" and meta["parameters"]["labels"] == manifest.labels

        for (x, _, png), cli_array, cli_image in zip(inputs, by_array, by_image):
            # KServe v2, binary tensor data both ways
            inp = triton.InferInput(in_name, [1, *x.shape], "FP32")
            inp.set_data_from_numpy(x[None], binary_data=True)
            res = client.infer("digits", [inp], outputs=[triton.InferRequestedOutput(out_name, binary_data=True)])
            logits = res.as_numpy(out_name)
            probs = softmax(logits[0].astype(np.float32))
            assert int(np.argmax(probs)) == cli_array["label"]
            assert abs(float(probs.max()) - cli_array["score"]) < 2e-6
            # the JSON variant of the same request gives the same numbers
            inp_json = triton.InferInput(in_name, [1, *x.shape], "FP32")
            inp_json.set_data_from_numpy(x[None], binary_data=False)
            np.testing.assert_allclose(client.infer("digits", [inp_json]).as_numpy(out_name), logits, rtol=0, atol=1e-6)
            # an encoded image as a BYTES input: the bundle's preprocessing, the CLI's answer
            img = triton.InferInput("image", [1], "BYTES")
            img.set_data_from_numpy(np.array([png.read_bytes()], dtype=object), binary_data=True)
            same_answer(json.loads(client.infer("digits", [img]).as_numpy("result")[0]), cli_image)

            # TF Serving REST: row and columnar formats, and a b64 image
            with httpx.Client(base_url=server.url) as http:
                rows = http.post("/v1/models/digits:predict", json={"instances": [x.tolist()]}).json()["predictions"]
                cols = http.post("/v1/models/digits/versions/1:predict", json={"inputs": {in_name: [x.tolist()]}}).json()
                b64 = http.post("/v1/models/digits:predict",
                                json={"instances": [{"b64": base64.b64encode(png.read_bytes()).decode()}]}).json()
            np.testing.assert_allclose(np.array(rows), logits, atol=1e-6)
            np.testing.assert_allclose(np.array(cols["outputs"]), logits, atol=1e-6)
            same_answer(b64["predictions"][0], cli_image)

        # curl: a PNG body, and the health route
        x, _, png = inputs[0]
        out = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", "Content-Type: image/png", "--data-binary",
                              f"@{png}", f"{server.url}/v1/models/digits:predict"], capture_output=True, text=True, check=True)
        same_answer(json.loads(out.stdout)["predictions"][0], by_image[0])
        ready = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/v2/health/ready"],
                               capture_output=True, text=True, check=True)
        assert ready.stdout == "200"
        # Triton's classification extension: "score:index:label", best first
        classes = client.infer("digits", [inp], outputs=[triton.InferRequestedOutput(out_name, class_count=3)])
        score, index, label = classes.as_numpy(out_name)[0][0].decode().split(":")
        assert int(index) == by_array[N_DIGITS - 1]["label"] and label == manifest.labels[int(index)]
    finally:
        code, summary = server.stop()
    assert code == 0 and summary["errors"] == 0 and summary["requests"] > 5 * N_DIGITS


def test_tf_serving_gives_every_output_of_a_multi_output_classifier(tmp_path):
    """A classifier with a box regressor first and logits second (--output-role logits): TF Serving's row and
    columnar answers name both outputs, and an image's answer decodes the logits and carries both outputs too
    (before: an image's prediction held only the record decoded from the served output)."""
    import httpx
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    from converter.cli import main as convert_main
    from edge_agent.bundle import generate_keypair

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])]
    inits = [numpy_helper.from_array(rng.normal(size=(192, 4)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.normal(size=(192, 5)).astype(np.float32), "wl"),
             numpy_helper.from_array(np.array([1, 192], np.int64), "flat")]
    nodes = [helper.make_node("Reshape", ["images", "flat"], ["f"]), helper.make_node("MatMul", ["f", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["f", "wl"], ["logits"])]
    src = tmp_path / "two.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "two", [x], outs, inits),
                                opset_imports=[helper.make_opsetid("", 13)]), str(src))
    key, pub = generate_keypair(tmp_path / "keys")
    bundle = tmp_path / "two.edgebundle"
    assert convert_main(["-q", "convert", str(src), "--output-role", "logits", "--precision", "fp32", "--profile",
                         "raspberry-pi-4", "--key", str(key), "--out", str(bundle), "--bench-runs", "0"]) == 0
    png = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(png)
    server = ServeModelProcess(bundle, pub, tmp_path / "home")
    try:
        with httpx.Client(base_url=server.url) as http:
            tensor = rng.normal(size=(3, 8, 8)).tolist()
            rows = http.post("/v1/models/two:predict", json={"instances": [tensor]}).json()["predictions"]
            cols = http.post("/v1/models/two:predict", json={"inputs": {"images": [tensor]}}).json()["outputs"]
            b64 = base64.b64encode(png.read_bytes()).decode()
            image = http.post("/v1/models/two:predict", json={"instances": [{"b64": b64}]}).json()["predictions"][0]
    finally:
        server.stop()
    assert set(rows[0]) == set(cols) == {"boxes", "logits"}
    assert len(rows[0]["boxes"]) == 4 and len(rows[0]["logits"]) == 5 and np.array(cols["logits"]).shape == (1, 5)
    assert set(image["outputs"]) == {"boxes", "logits"} and len(image["outputs"]["boxes"]) == 4
    assert image["label"] == int(np.argmax(image["outputs"]["logits"]))  # the record decodes the logits, not boxes
