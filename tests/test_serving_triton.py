"""What Triton's own tools ask a KServe v2 server beyond the protocol's core: the model configuration
(tritonclient's get_model_config), which perf_analyzer and Triton's client examples read before any inference."""

from __future__ import annotations

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
