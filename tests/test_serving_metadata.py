"""What clients read about the model before any inference: Triton's model configuration (tritonclient's
get_model_config, read by perf_analyzer and Triton's client examples) and TF Serving's signature metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .serving_helpers import channel_sum_model, constant_image_classifier, dynamic_batch_model
from .test_serving_bounds import _serving


def test_model_config_tells_a_triton_client_how_to_batch_and_shape_its_inputs(tmp_path):
    """GET /v2/models/NAME/config was a 404 'no route'. It now says max_batch_size (the batcher's --max-batch when
    every input's first axis is dynamic, else 0) and dims without the batch axis when batching, in the clients'
    (source) layout, as Triton does; an input built from it is taken."""
    import tritonclient.http as triton

    with _serving(dynamic_batch_model(tmp_path / "linear")) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        config = client.get_model_config("linear")
        assert config["max_batch_size"] == 8 and config["input"] == [
            {"name": "x", "data_type": "TYPE_FP32", "dims": [4], "format": "FORMAT_NONE"}]
        assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]
        x = triton.InferInput("x", [2, *config["input"][0]["dims"]], "FP32")
        x.set_data_from_numpy(np.ones((2, 4), np.float32))
        assert client.infer("linear", [x]).as_numpy("y").shape == (2, 3)
    with _serving(channel_sum_model(tmp_path / "sums", "NHWC", 1)) as server:  # the bundle is NHWC, clients NCHW
        config = triton.InferenceServerClient(server.url.removeprefix("http://")).get_model_config("sums")
        assert config["input"][0]["dims"] == [3, 2, 2] and config["input"][0]["format"] == "FORMAT_NCHW"
    with _serving(constant_image_classifier(tmp_path / "constant")) as server:  # a fixed batch of 1
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        config = client.get_model_config("constant")
        assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [1, 3, 16, 16]
        assert client.get_model_metadata("constant")["inputs"][0]["shape"] == config["input"][0]["dims"]


def _int16_model(folder: Path):
    """(manifest, bundle dir) of y = float(x) with x: int16 [batch, 4]: a model taking an integer type TF has."""
    import onnx
    from onnx import TensorProto, helper

    from edge_agent.bundle import Manifest, Postprocess, TensorSpec

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "cast",
                              [helper.make_tensor_value_info("x", TensorProto.INT16, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return Manifest(name="cast", version=1, profile="x86-64-cpu", format="onnx", runtime="onnxruntime", precision="fp32",
                    model_file="model.onnx", inputs=[TensorSpec("x", "int16", ["batch", 4], "NC")],
                    outputs=[TensorSpec("y", "float32", ["batch", 4], "NC")],
                    postprocess=Postprocess(kind="none")), folder


def test_tf_serving_metadata_names_every_integer_type_tensorflow_has(tmp_path):
    """TF Serving's metadata said DT_INVALID for an INT16/UINT16/UINT32/UINT64 tensor (types TensorFlow has), so a
    client building its request from the signature could not; it now says DT_INT16 etc., as KServe's metadata does."""
    import httpx

    with _serving(_int16_model(tmp_path / "cast")) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        signature = client.get("/v1/models/cast/metadata").json()["metadata"]["signature_def"]["signature_def"]
        assert signature["serving_default"]["inputs"]["x"]["dtype"] == "DT_INT16"
        assert client.get("/v2/models/cast").json()["inputs"][0]["datatype"] == "INT16"
        r = client.post("/v1/models/cast:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 200 and r.json()["predictions"] == [[1.0, 2.0, 3.0, 4.0]], r.text
