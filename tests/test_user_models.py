"""Models and inputs a new user brings that the digits CNN does not exercise: integer (token id) inputs,
spatial and sequence outputs, image files as phones and scanners write them.

Every model is a tiny ONNX graph built with onnx.helper (converted in about a second); every run goes through
the real CLIs (edge-convert, edge-agent) and the answers are checked against onnxruntime on the float model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.cli import main as convert_main
from edge_agent.bundle import generate_keypair
from edge_agent.cli import main as agent_main

VOCAB, STEPS, DIM, CLASSES = 20, 12, 16, 5


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def token_classifier(path: Path) -> Path:
    """int64 token ids [1, STEPS] -> embedding (Gather) -> mean over time -> class logits [1, CLASSES]."""
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.normal(size=(VOCAB, DIM)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.normal(size=(DIM, CLASSES)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, STEPS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
                              [emb, w])
    return _save(graph, path)


def _convert(model: Path, out: Path, key: Path, *extra: str) -> int:
    return convert_main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(key),
                         "--out", str(out), "--bench-runs", "0", *extra])


def test_a_model_with_int64_token_inputs_converts_to_int8_and_answers_as_float(keys, tmp_path, capsys):
    """A token-id model (int64 input) with an int64 .npz died in calibration with ONNX Runtime's
    'Unexpected input data type. Actual: (tensor(float))' (exit 1): the data loader cast every array to float32."""
    model = token_classifier(tmp_path / "tokens.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", ids=rng.integers(0, VOCAB, (48, STEPS)))
    np.savez(tmp_path / "eval.npz", ids=rng.integers(0, VOCAB, (48, STEPS)))
    out = tmp_path / "tokens.edgebundle"
    assert _convert(model, out, keys[0], "--calibration", str(tmp_path / "cal.npz"),
                    "--eval", str(tmp_path / "eval.npz")) == 0
    one = rng.integers(0, VOCAB, (1, STEPS)).astype(np.int64)
    np.save(tmp_path / "one.npy", one)
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "one.npy"), "--trust", str(keys[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = ort.InferenceSession(str(model)).run(None, {"ids": one})[0]
    assert got["label"] == int(want.argmax())


def halves_model(path: Path, size: int = 8) -> Path:
    """Image [1, 3, size, size] -> 4 scores: mean brightness of the left, right, top and bottom halves."""
    masks = np.zeros((4, size, size), np.float32)
    h = size // 2
    masks[0, :, :h], masks[1, :, h:], masks[2, :h, :], masks[3, h:, :] = 1, 1, 1, 1
    w = np.tile(masks.reshape(4, 1, size * size), (1, 3, 1)).reshape(4, -1).T / (3 * h * size)
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["scores"])]
    graph = helper.make_graph(
        nodes, "halves", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1, 3 * size * size], np.int64), "flat")])
    return _save(graph, path)


def test_exif_rotated_and_16_bit_images_read_as_opencv_reads_them(keys, tmp_path, capsys):
    """`edge-agent run BUNDLE photo.jpg` ignored the EXIF orientation (a phone photo went in sideways) and
    saturated 16-bit grey PNGs to white, while `--source FOLDER` (OpenCV's imread) read both right: one file,
    two answers. Brightest half: 0 left, 1 right, 2 top, 3 bottom."""
    from PIL import Image

    out = tmp_path / "halves.edgebundle"
    assert _convert(halves_model(tmp_path / "halves.onnx"), out, keys[0], "--precision", "fp32") == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:24] = 250  # stored with its top half bright; orientation 6 turns it 90 degrees clockwise: right bright
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(photos / "phone.jpg", exif=exif, quality=95)
    grey16 = np.full((48, 64), 5000, np.uint16)
    grey16[:, 32:] = 30000  # right half brighter, both far above 255
    Image.fromarray(grey16).save(photos / "scan16.png")
    capsys.readouterr()
    files = [str(photos / "phone.jpg"), str(photos / "scan16.png")]
    assert agent_main(["run", str(out), *files, "--trust", str(keys[1]), "--json"]) == 0
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)]
    assert labels == [1, 1]
    results = tmp_path / "folder.jsonl"
    assert agent_main(["run", str(out), "--source", str(photos), "--output", str(results), "--trust",
                       str(keys[1])]) == 0
    by_image = {r["image"]: r["label"] for r in map(json.loads, results.read_text().splitlines())}
    assert by_image == {"phone.jpg": 1, "scan16.png": 1}
