"""Shared pieces of the inference endpoint tests: `edge-agent serve-model` as a real process, and a small
ONNX model with a dynamic batch axis (the digits CNN has a fixed batch of 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class ServeModelProcess:
    """`edge-agent serve-model BUNDLE --http 0 --json` as a subprocess; `url` once it listens."""

    def __init__(self, bundle: Path, pub: Path, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "edge_agent.cli", "--home", str(home), "serve-model", str(bundle), "--trust", str(pub),
               "--http", "0", "--json", "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # the ready line
        if not line:
            raise RuntimeError(f"serve-model did not start: {self.proc.stderr.read()}")
        self.ready = json.loads(line)
        self.url: str = self.ready["url"]
        self.host_port = self.url.removeprefix("http://")

    def stop(self) -> tuple[int, dict]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, json.loads(out)


def dynamic_batch_model(folder: Path):
    """(manifest, bundle dir) of y = x @ W + b with input x: [batch, 4] -> y: [batch, 3], batch dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_agent.bundle import Manifest, Postprocess, TensorSpec

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    manifest = Manifest(name="linear", version=1, profile="x86-64-cpu", format="onnx", runtime="onnxruntime",
                        precision="fp32", model_file="model.onnx",
                        inputs=[TensorSpec("x", "float32", ["batch", 4], "NC")],
                        outputs=[TensorSpec("y", "float32", ["batch", 3], "NC")],
                        postprocess=Postprocess(kind="classification"), labels=["a", "b", "c"])
    return manifest, folder



def channel_sum_model(folder: Path, layout: str, version: int):
    """(manifest, bundle dir) of y[b, c] = sum of channel c of x, x [batch, 3, 2, 2] in NCHW; with layout NHWC the
    model takes x as [batch, 2, 2, 3] and the manifest says the source was NCHW (as onnx2tf's TFLite bundles do)."""
    import onnx
    from onnx import TensorProto, helper

    from edge_agent.bundle import Manifest, Postprocess, TensorSpec

    nchw = layout == "NCHW"
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3] if nchw else [1, 2])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "channel_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 2, 2] if nchw else ["batch", 2, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    spec = TensorSpec("x", "float32", ["batch", 3, 2, 2] if nchw else ["batch", 2, 2, 3], layout,
                      source_layout=None if nchw else "NCHW")
    manifest = Manifest(name="sums", version=version, profile="x86-64-cpu", format="onnx", runtime="onnxruntime",
                        precision="fp32", model_file="model.onnx", inputs=[spec],
                        outputs=[TensorSpec("y", "float32", ["batch", 3], "NC")],
                        postprocess=Postprocess(kind="classification"), labels=["r", "g", "b"])
    return manifest, folder


def constant_image_classifier(folder: Path):
    """(manifest, bundle dir) of an image classifier (16x16 RGB in) whose scores are constant, class "c" first: a
    model with the bundle's image preprocessing and nothing to train."""
    from edge_agent.bundle import Manifest, Postprocess, Preprocess, TensorSpec

    from .camera_helpers import constant_detector_onnx

    folder.mkdir(parents=True, exist_ok=True)
    constant_detector_onnx(folder / "model.onnx", {"logits": np.array([[1.0, 2.0, 3.0]])}, (1, 3, 16, 16))
    manifest = Manifest(name="constant", version=1, profile="x86-64-cpu", format="onnx", runtime="onnxruntime",
                        precision="fp32", model_file="model.onnx",
                        inputs=[TensorSpec("image", "float32", [1, 3, 16, 16], "NCHW")],
                        outputs=[TensorSpec("logits", "float32", [1, 3])],
                        preprocess=Preprocess(kind="image", color="RGB", size=[16, 16], scale=1 / 255),
                        postprocess=Postprocess(kind="classification"), labels=["a", "b", "c"])
    return manifest, folder
