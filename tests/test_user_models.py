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
from edge_agent.errors import exit_code

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


def _manifest(bundle: Path) -> dict:
    """The bundle's manifest (unverified: the test only looks at what the converter wrote)."""
    from edge_agent.bundle import read_manifest_unverified

    return read_manifest_unverified(bundle).to_dict()


def _noise_photos(folder: Path, count: int, hw: tuple[int, int], seed: int) -> Path:
    """A folder of `count` random RGB PNGs of size hw."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((*hw, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


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


def map_model(path: Path, size: int | str = 32) -> Path:
    """Segmentation-style: image [1, 3, size, size] -> 1x1 conv -> per-pixel scores [1, 4, size, size]
    (a str size: dynamic height and width, as PP-OCR's text detector)."""
    w = np.random.default_rng(2).normal(size=(4, 3, 1, 1)).astype(np.float32)
    hw = [size, size] if isinstance(size, int) else [f"{size}_h", f"{size}_w"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["map"])], "seg",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 4, *hw])],
        [numpy_helper.from_array(w, "w")])
    return _save(graph, path)


@pytest.fixture(scope="module")
def map_bundle(keys, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(float model, fp32 bundle, a 32x32 photo) of the segmentation-style model, converted with no --task."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("map")
    model = map_model(folder / "seg.onnx")
    out = folder / "seg.edgebundle"
    assert _convert(model, out, keys[0], "--precision", "fp32") == 0
    photo = folder / "photo.png"
    Image.fromarray((np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)).save(photo)
    return model, out, photo


def _float_map(model: Path, photo: Path) -> np.ndarray:
    from PIL import Image

    pixels = np.asarray(Image.open(photo), dtype=np.float32) / 255
    return ort.InferenceSession(str(model)).run(None, {"image": pixels.transpose(2, 0, 1)[None]})[0]


def test_a_map_output_is_served_raw_not_as_a_top_k_over_its_pixels(map_bundle, keys, capsys):
    """A segmentation-style model (output [1, 4, H, W]) became a 'classifier' of H*W*4 classes: `edge-agent run`
    printed pixel indices as labels ('4033 (0.0003)'), and even `--task none` bundles were run through top-k.
    Now such a model gets a raw-output bundle and run prints / returns the outputs themselves."""
    model, out, photo = map_bundle
    manifest = _manifest(out)
    assert manifest["postprocess"]["kind"] == "none"
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["passes"][0]["task"] == {"task": "none", "from": "default"}  # the report said 'classify'
    capsys.readouterr()
    assert agent_main(["run", str(out), str(photo), "--trust", str(keys[1]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert "label" not in got and [o["name"] for o in got["outputs"]] == ["map"]
    np.testing.assert_allclose(np.asarray(got["outputs"][0]["data"]), _float_map(model, photo), atol=1e-5)
    assert agent_main(["run", str(out), str(photo), "--trust", str(keys[1])]) == 0
    assert "map float32[1, 4, 32, 32] min" in capsys.readouterr().out


def test_serve_model_answers_an_image_with_the_raw_outputs(map_bundle, keys, tmp_path):
    """An image posted to serve-model got `{"kind": "none", "outputs": [[1, 4, 32, 32]]}`: the shapes, no values."""
    import urllib.request

    from .serving_helpers import ServeModelProcess

    model, out, photo = map_bundle
    server = ServeModelProcess(out, keys[1], tmp_path / "home")
    try:
        req = urllib.request.Request(f"{server.url}/v2/models/seg/infer", data=photo.read_bytes(),
                                     headers={"Content-Type": "image/png"})
        body = json.loads(urllib.request.urlopen(req, timeout=30).read())
    finally:
        server.stop()
    answer = json.loads(body["outputs"][0]["data"][0])
    np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]), _float_map(model, photo), atol=1e-5)


def test_json_piped_into_head_stops_quietly(map_bundle, keys):
    """`edge-agent run ... --json | head`: the reader leaves early; the agent printed a BrokenPipeError traceback."""
    import subprocess
    import sys

    _, out, photo = map_bundle
    cmd = [sys.executable, "-m", "edge_agent.cli", "run", str(out), str(photo), "--trust", str(keys[1]), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.read(10)
    proc.stdout.close()  # the output (~100 kB of JSON) is larger than the pipe's buffer: the agent's write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == exit_code("stdout-closed") and "Traceback" not in err, err


def test_an_explicit_task_classify_keeps_top_k_on_a_map(keys, tmp_path, capsys):
    """`--task classify` is still obeyed for a spatial output: the default changed, the option did not."""
    out = tmp_path / "seg.edgebundle"
    assert _convert(map_model(tmp_path / "seg.onnx", 8), out, keys[0], "--precision", "fp32", "--task", "classify") == 0
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1]), "--json"]) == 0
    assert "label" in json.loads(capsys.readouterr().out)


def test_image_data_for_a_model_that_cannot_take_images_says_what_to_do(keys, tmp_path, capsys):
    """An image folder or video for a model with dynamic height/width (PP-OCR's detector) or a non-image input
    was refused with 'image folders need image preprocessing options (--mean/--std/--color ...)': those options
    cannot help. The line now names the input's shape and the fix (--input-shape, or an .npz)."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photos / "a.png")
    dynamic = map_model(tmp_path / "dyn.onnx", "d")
    assert _convert(dynamic, tmp_path / "o.edgebundle", keys[0], "--calibration", str(photos)) == 22
    err = capsys.readouterr().err
    assert "--input-shape, e.g. --input-shape 1x3x640x640" in err and "--mean" not in err, err
    assert _convert(dynamic, tmp_path / "o.edgebundle", keys[0], "--calibration", str(photos), "--input-shape",
                    "1x3x16x16", "--precision", "fp32") == 0
    tokens = token_classifier(tmp_path / "tokens.onnx")
    assert _convert(tokens, tmp_path / "t.edgebundle", keys[0], "--calibration", str(photos)) == 22
    err = capsys.readouterr().err
    assert "input 'ids' is int64[1, 12]: give an .npz" in err and "--mean" not in err, err


TORCH_MODELS = '''
import torch


class Tokens(torch.nn.Module):
    """token ids (int64) -> per-sequence class logits"""

    def __init__(self):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 5)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(4, 16), torch.nn.Linear(16, 3)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


def tokens():
    torch.manual_seed(0)
    return Tokens().eval()


def two_inputs():
    torch.manual_seed(0)
    return TwoInputs().eval()
'''


def _torch_factories(folder: Path):
    import importlib.util

    path = folder / "models.py"
    path.write_text(TORCH_MODELS)
    spec = importlib.util.spec_from_file_location("user_models_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_pytorch_factories_with_int64_or_two_inputs_export(keys, tmp_path, capsys):
    """`file.py:factory` was exported with one float32 zeros tensor: an Embedding refused it ('Expected tensor for
    argument #1 indices to have ... Long, Int') and a forward(x, y) failed ('missing 1 required positional argument:
    y'), exit 21. The example now takes the .npz data's dtype, and each input of a forward(x, y) its named array;
    `edge-agent run` takes such a model's sample as an .npz."""
    import torch

    path, module = _torch_factories(tmp_path)
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "ids.npz", ids=rng.integers(0, 20, (32, 6)))
    assert _convert(Path(f"{path}:tokens"), tmp_path / "tokens.edgebundle", keys[0], "--input-shape", "1x6",
                    "--precision", "fp32", "--eval", str(tmp_path / "ids.npz")) == 0
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(32, 8)).astype(np.float32),
             y=rng.normal(size=(32, 4)).astype(np.float32))
    out = tmp_path / "two.edgebundle"
    assert _convert(Path(f"{path}:two_inputs"), out, keys[0], "--precision", "fp32", "--eval",
                    str(tmp_path / "xy.npz")) == 0
    x, y = rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(1, 4)).astype(np.float32)
    np.savez(tmp_path / "one.npz", x=x, y=y)
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "one.npz"), "--trust", str(keys[1]), "--json"]) == 0
    with torch.no_grad():
        want = int(module.two_inputs()(torch.from_numpy(x), torch.from_numpy(y)).argmax())
    assert json.loads(capsys.readouterr().out)["label"] == want
    np.save(tmp_path / "x.npy", x)
    assert agent_main(["run", str(out), str(tmp_path / "x.npy"), "--trust", str(keys[1])]) == 3
    assert "the model has 2 inputs (x, y): give an .npz" in capsys.readouterr().err
    assert _convert(Path(f"{path}:two_inputs"), tmp_path / "no.edgebundle", keys[0], "--precision", "fp32") == 21
    assert "forward() takes 2 inputs (x, y): give --calibration or --eval as an .npz" in capsys.readouterr().err


def test_keras_inputs_are_found_by_the_names_the_author_gave_them(keys, tmp_path, capsys):
    """A two-input Keras model's .npz named after its Input layers (feat, meta) was refused: "no array named
    'serving_default_feat:0'", TFLite's name for the input. Arrays now match the Keras names, in convert and run,
    and serve-model takes tensors by those names (it answered 400 'model inputs are [serving_default_feat:0, ...]')."""
    import tensorflow as tf

    feat, meta = tf.keras.Input((8,), name="feat"), tf.keras.Input((4,), name="meta")
    hidden = tf.keras.layers.Dense(16, activation="relu")(tf.keras.layers.Concatenate()([feat, meta]))
    model = tf.keras.Model([feat, meta], tf.keras.layers.Dense(3)(hidden))
    model.save(tmp_path / "two.keras")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "data.npz", feat=rng.normal(size=(32, 8)).astype(np.float32),
             meta=rng.normal(size=(32, 4)).astype(np.float32))
    out = tmp_path / "two.edgebundle"
    capsys.readouterr()
    assert _convert(tmp_path / "two.keras", out, keys[0], "--precision", "fp32", "--eval", str(tmp_path / "data.npz")) == 0
    printed = capsys.readouterr()  # Keras' export listing ("Saved artifact at ...", ~10 lines a model) is debug log
    assert "Saved artifact" not in printed.err + printed.out and "Captures:" not in printed.err
    one = {"feat": rng.normal(size=(1, 8)).astype(np.float32), "meta": rng.normal(size=(1, 4)).astype(np.float32)}
    np.savez(tmp_path / "one.npz", **one)
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "one.npz"), "--trust", str(keys[1]), "--json"]) == 0
    want = model([one["feat"], one["meta"]]).numpy()
    assert json.loads(capsys.readouterr().out)["label"] == int(want.argmax())
    # serve-model: a KServe client names the inputs as the Keras model does too
    import urllib.request

    from .serving_helpers import ServeModelProcess

    server = ServeModelProcess(out, keys[1], tmp_path / "home")
    try:
        body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
                           for k, v in one.items()]}
        req = urllib.request.Request(f"{server.url}/v2/models/two/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
    finally:
        server.stop()
    np.testing.assert_allclose(answer["outputs"][0]["data"], want.ravel(), rtol=1e-4, atol=1e-5)


def test_a_file_with_several_samples_gets_an_answer_per_sample(keys, tmp_path, capsys):
    """The converter's data files hold samples on the first axis; `edge-agent run` given such a file died with
    ONNX Runtime's 'Got invalid dimensions' (exit 1) on a batch-1 model, and on a dynamic-batch model printed the
    first sample's answer only. Now each sample gets its line, FILE[i]."""
    from .serving_helpers import dynamic_batch_model

    tokens = token_classifier(tmp_path / "tokens.onnx")
    fixed = tmp_path / "tokens.edgebundle"
    assert _convert(tokens, fixed, keys[0], "--precision", "fp32") == 0
    dyn_manifest, dyn_dir = dynamic_batch_model(tmp_path / "dyn")
    dynamic = tmp_path / "dyn.edgebundle"
    assert _convert(dyn_dir / "model.onnx", dynamic, keys[0], "--precision", "fp32") == 0
    rng = np.random.default_rng(7)
    cases = [(fixed, tokens, "ids", rng.integers(0, VOCAB, (3, STEPS)).astype(np.int64), "many.npy"),
             (dynamic, dyn_dir / "model.onnx", "x", rng.normal(size=(3, 4)).astype(np.float32), "many.npy"),
             (fixed, tokens, "ids", rng.integers(0, VOCAB, (3, STEPS)).astype(np.int64), "eval.npz")]
    for bundle, model, name, samples, file in cases:
        if file.endswith(".npz"):  # an eval file of the converter's: its labels are not an input
            np.savez(tmp_path / file, tokens=samples, labels=np.arange(3))
        else:
            np.save(tmp_path / file, samples)
        capsys.readouterr()
        assert agent_main(["run", str(bundle), str(tmp_path / file), "--trust", str(keys[1]), "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        session = ort.InferenceSession(str(model))
        want = [int(session.run(None, {name: samples[i:i + 1]})[0].argmax()) for i in range(3)]
        assert [r["input"][-3:] for r in got] == ["[0]", "[1]", "[2]"]
        assert [r["label"] for r in got] == want


def test_a_detection_bundle_given_a_tensor_returns_boxes_not_classes(keys, tmp_path, capsys):
    """`edge-agent run yolo.edgebundle frame.npy` printed '6246 (319.4878)': the detector's raw output read as
    class scores. A tensor now gets the same boxes as the same pixels given as an image (in model-input pixels)."""
    from PIL import Image

    from .detector_data import package_file, yolo_onnx

    out = tmp_path / "yolo.edgebundle"
    assert _convert(yolo_onnx(), out, keys[0], "--precision", "fp32") == 0
    photo = np.asarray(Image.open(package_file("skimage", "data/astronaut.png")).convert("RGB").resize((320, 320)))
    Image.fromarray(photo).save(tmp_path / "astronaut320.png")
    np.save(tmp_path / "astronaut320.npy", (photo.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32))
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "astronaut320.png"), str(tmp_path / "astronaut320.npy"),
                       "--trust", str(keys[1]), "--json"]) == 0
    image, tensor = json.loads(capsys.readouterr().out)
    assert "label" not in tensor and tensor["detections"], tensor
    assert [d["name"] for d in tensor["detections"]] == [d["name"] for d in image["detections"]]
    np.testing.assert_allclose([d["box"] for d in tensor["detections"]], [d["box"] for d in image["detections"]],
                               atol=1.0)


def uint8_pixels_model(path: Path) -> Path:
    """TensorFlow-export style: raw uint8 pixels [1, 32, 32, 3] (NHWC) -> Cast -> per-channel means -> 4 scores."""
    w = numpy_helper.from_array(np.array([[1, -1, 0, 0], [0, 1, -1, 0], [0, 0, 1, -1]], np.float32) / 50, "w")
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["scores"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 32, 32, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])], [w])
    return _save(graph, path)


def test_a_model_taking_uint8_pixels_converts_from_images_and_runs_on_them(keys, tmp_path, capsys):
    """A model whose input is uint8 pixels was refused with exit 22 ('Unexpected input data type. Actual:
    (tensor(float)), expected: (tensor(uint8))'): images were always scaled to float. Its bundle now takes the grey
    levels as they are, in calibration, the gate and `edge-agent run`."""
    from PIL import Image

    model = uint8_pixels_model(tmp_path / "u8.onnx")
    photos = _noise_photos(tmp_path / "photos", 8, (40, 48), seed=8)
    out = tmp_path / "u8.edgebundle"
    assert _convert(model, out, keys[0], "--calibration", str(photos)) == 0
    assert _manifest(out)["preprocess"]["scale"] == 1.0
    tinted = np.zeros((32, 32, 3), np.uint8)
    tinted[..., 1] = 200  # green: score 1 (green minus blue) wins
    Image.fromarray(tinted).save(tmp_path / "green.png")
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "green.png"), "--trust", str(keys[1]), "--json"]) == 0
    want = ort.InferenceSession(str(model)).run(None, {"pixels": tinted[None]})[0]
    assert json.loads(capsys.readouterr().out)["label"] == int(want.argmax()) == 1


def test_integer_input_models_convert_without_data(keys, tmp_path):
    """`--precision fp32` with no data times the model on seeded noise: float32 noise for a uint8 or int64 input
    was ONNX Runtime's 'Unexpected input data type' (exit 1). The noise now has the input's type."""
    for model in (uint8_pixels_model(tmp_path / "u8.onnx"), token_classifier(tmp_path / "tokens.onnx")):
        out = tmp_path / f"{model.stem}.edgebundle"
        assert convert_main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(keys[0]),
                             "--out", str(out), "--precision", "fp32", "--bench-runs", "3"]) == 0
        assert out.is_file()


def test_output_paths_are_checked_before_the_conversion_runs(keys, tmp_path, capsys):
    """A conversion failing with --out in a folder that did not exist yet reported '[Errno 2] No such file or
    directory' (exit 1) instead of its own error: writing the failed conversion's report hid it. An unreadable
    --labels file was exit 1 too. The folder is now created first; a --out that is a folder, or a folder that
    cannot be created, and a missing labels file are usage errors (2) before anything runs."""
    model = token_classifier(tmp_path / "tokens.onnx")
    np.savez(tmp_path / "wrong.npz", a=np.zeros((4, 3)), b=np.zeros((4, 3)))
    nested = tmp_path / "new" / "deeper" / "tokens.edgebundle"
    assert _convert(model, nested, keys[0], "--calibration", str(tmp_path / "wrong.npz")) == 22
    assert "has no array named 'ids'" in capsys.readouterr().err and Path(f"{nested}.report.json").is_file()
    assert _convert(model, tmp_path, keys[0], "--precision", "fp32") == 2
    assert "is a folder: give the file to write" in capsys.readouterr().err
    (tmp_path / "plain").write_text("a file, not a folder")
    assert _convert(model, tmp_path / "plain" / "x.edgebundle", keys[0], "--precision", "fp32") == 2
    assert "cannot create the folder of" in capsys.readouterr().err
    assert _convert(model, tmp_path / "l.edgebundle", keys[0], "--precision", "fp32", "--labels",
                    str(tmp_path / "missing.txt")) == 2
    assert "--labels" in capsys.readouterr().err


def test_an_input_the_model_fails_on_is_one_line_exit_3_and_http_400(keys, tmp_path, capsys):
    """A token id beyond the vocabulary made ONNX Runtime fail inside the model: exit 1 ('other error') after ORT's
    own red log line. It is now a bad input (3) with one line naming the failing node; serve-model answered 500."""
    out = tmp_path / "tokens.edgebundle"
    assert _convert(token_classifier(tmp_path / "tokens.onnx"), out, keys[0], "--precision", "fp32") == 0
    np.save(tmp_path / "bad.npy", np.full((1, STEPS), VOCAB + 80, np.int64))
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "bad.npy"), "--trust", str(keys[1])]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model failed on this input" in err[0] and "Gather" in err[0], err
    import httpx

    from .serving_helpers import ServeModelProcess

    server = ServeModelProcess(out, keys[1], tmp_path / "home")  # a client sending it is told so: 400, not 500
    try:
        predict = f"{server.url}/v1/models/tokens:predict"
        answer = httpx.post(predict, json={"instances": [[VOCAB + 80] * STEPS]})
        good = httpx.post(predict, json={"instances": [[1] * STEPS]})
    finally:
        server.stop()
    assert answer.status_code == 400 and "the model failed on this input" in answer.json()["error"], answer.text
    assert good.status_code == 200, good.text


def test_a_labels_file_that_does_not_match_the_classes_is_warned_about(keys, tmp_path, caplog):
    """Three names for a four-class model converted silently; the device then named class 3 '3'."""
    (tmp_path / "labels.txt").write_text("left\nright\ntop\n")
    assert _convert(halves_model(tmp_path / "halves.onnx"), tmp_path / "h.edgebundle", keys[0], "--precision", "fp32",
                    "--labels", str(tmp_path / "labels.txt")) == 0
    assert "--labels has 3 names but output scores has 4 classes" in caplog.text


def test_a_keras_token_model_converts_to_full_int8(keys, tmp_path, capsys):
    """A Keras text model (int32 token ids -> Embedding) died in TFLiteConverter's calibration with 'Got value of
    type FLOAT32 but expected type INT32' (exit 21): the representative dataset cast every input to float32."""
    import tensorflow as tf

    tokens = tf.keras.Input((STEPS,), dtype="int32", name="tokens")
    pooled = tf.keras.layers.GlobalAveragePooling1D()(tf.keras.layers.Embedding(VOCAB, 8)(tokens))
    model = tf.keras.Model(tokens, tf.keras.layers.Dense(3)(pooled))
    model.save(tmp_path / "text.keras")
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "ids.npz", tokens=rng.integers(0, VOCAB, (32, STEPS)).astype(np.int32))
    out = tmp_path / "text.edgebundle"
    assert _convert(tmp_path / "text.keras", out, keys[0], "--calibration", str(tmp_path / "ids.npz"),
                    "--eval", str(tmp_path / "ids.npz")) == 0
    assert _manifest(out)["precision"].startswith("int8")


def test_a_folder_or_video_given_as_an_input_file_points_to_source(map_bundle, keys, tmp_path, capsys):
    """`edge-agent run BUNDLE photos/` said 'input photos does not exist' (it does: it is a folder), and a video
    file was 'unsupported input type': both now name --source, which runs them."""
    _, out, photo = map_bundle
    assert agent_main(["run", str(out), str(photo.parent), "--trust", str(keys[1])]) == 3
    assert f"is a folder: run every image in it with --source {photo.parent}" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    assert agent_main(["run", str(out), str(tmp_path / "clip.mp4"), "--trust", str(keys[1])]) == 3
    assert "clip.mp4 is a video: run it with --source" in capsys.readouterr().err


def test_a_single_array_npy_is_calibration_and_eval_data(keys, tmp_path, capsys):
    """`edge-agent run` takes .npy files, the converter refused them ('data must be an .npz file, ...'); a
    single-input model's samples as one .npy now calibrate and gate it. A missing data file says so."""
    rng = np.random.default_rng(10)
    np.save(tmp_path / "ids.npy", rng.integers(0, VOCAB, (24, STEPS)))
    model = token_classifier(tmp_path / "tokens.onnx")
    assert _convert(model, tmp_path / "t.edgebundle", keys[0], "--calibration", str(tmp_path / "ids.npy"),
                    "--eval", str(tmp_path / "ids.npy")) == 0
    assert _convert(model, tmp_path / "m.edgebundle", keys[0], "--calibration", str(tmp_path / "missing.npz")) == 22
    assert "missing.npz does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "B", "--runs", "0"], ["bench", "B", "--warmup", "-1"],
                                  ["run", "B", "x.npy", "--top-k", "0"], ["run", "B", "--source", "v.mp4", "--max-frames",
                                                                         "0"]])
def test_counts_below_their_minimum_are_usage_errors(argv, capsys):
    """`edge-agent bench --runs 0` ended with "error: 'min_ms'" (a KeyError, exit 1); `run --top-k 0` printed every
    class and `--top-k -2` one. Counts are now checked by the parser: one line, exit 2."""
    with pytest.raises(SystemExit) as stop:
        agent_main(argv)
    assert stop.value.code == 2 and "must be at least" in capsys.readouterr().err


def test_tflite_int8_of_an_integer_input_onnx_model_is_refused_with_the_way_out(keys, tmp_path, capsys):
    """onnx2tf's int8 calibration feeds floats: a uint8-pixel model died inside it ('Got value of type FLOAT32 but
    expected type UINT8', exit 1). Refused up front now (exit 2), naming what works."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(photos / "a.png")
    model = uint8_pixels_model(tmp_path / "u8.onnx")
    assert _convert(model, tmp_path / "t.edgebundle", keys[0], "--format", "tflite", "--calibration", str(photos)) == 2
    assert "needs float inputs; pixels is uint8: use --format onnx" in capsys.readouterr().err


def test_a_keras_model_taking_uint8_pixels_runs_on_images(keys, tmp_path, capsys):
    """A Keras model with a uint8 Input (its Rescaling layer inside) converted, then every image failed on the
    device: 'input serving_default_pixels:0 is uint8 without quantization parameters'. Grey levels now go in as
    they are, and the answer is the Keras model's."""
    import tensorflow as tf
    from PIL import Image

    pixels = tf.keras.Input((32, 32, 3), dtype="uint8", name="pixels")
    x = tf.keras.layers.Rescaling(1 / 255)(pixels)
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Conv2D(4, 3)(x))
    model = tf.keras.Model(pixels, tf.keras.layers.Dense(3)(x))
    model.save(tmp_path / "u8.keras")
    photos = _noise_photos(tmp_path / "photos", 6, (32, 32), seed=11)
    out = tmp_path / "u8.edgebundle"
    assert _convert(tmp_path / "u8.keras", out, keys[0], "--precision", "fp32") == 0
    capsys.readouterr()
    assert agent_main(["run", str(out), str(photos / "0.png"), "--trust", str(keys[1]), "--json"]) == 0
    want = model(np.asarray(Image.open(photos / "0.png"))[None]).numpy()
    assert json.loads(capsys.readouterr().out)["label"] == int(want.argmax())


def test_exported_programs_and_torchscript_with_two_inputs_convert(keys, tmp_path, capsys):
    """Every exported program (.pt2) failed: 'Calling eval() is not supported yet.' (exit 1, torch 2.13); a
    TorchScript forward(x, y) was asked for --input-shape (its signature cannot be read by inspect). Both convert
    now, and answer as the PyTorch model."""
    import torch

    _, module = _torch_factories(tmp_path)
    model = module.two_inputs()
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(1, 4)).astype(np.float32)
    torch.export.save(torch.export.export(model, (torch.from_numpy(x), torch.from_numpy(y))), tmp_path / "two.pt2")
    torch.jit.script(model).save(tmp_path / "two.pt")
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(16, 8)).astype(np.float32),
             y=rng.normal(size=(16, 4)).astype(np.float32))
    np.savez(tmp_path / "one.npz", x=x, y=y)
    with torch.no_grad():
        want = int(model(torch.from_numpy(x), torch.from_numpy(y)).argmax())
    for source in ("two.pt2", "two.pt"):
        out = tmp_path / f"{source}.edgebundle"
        assert _convert(tmp_path / source, out, keys[0], "--precision", "fp32", "--eval", str(tmp_path / "xy.npz")) == 0
        capsys.readouterr()
        assert agent_main(["run", str(out), str(tmp_path / "one.npz"), "--trust", str(keys[1]), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["label"] == want, source


def test_a_failing_factory_is_an_import_error_that_names_it(keys, tmp_path, capsys):
    """A factory raising (a weights file missing) ended with its bare message and exit 1; a shape the model cannot
    take printed torch's colour codes into the one line. Now exit 21 naming the factory, and plain text."""
    (tmp_path / "broken.py").write_text("def build():\n    raise RuntimeError('weights file missing')\n")
    assert _convert(Path(f"{tmp_path / 'broken.py'}:build"), tmp_path / "b.edgebundle", keys[0], "--input-shape", "1x3",
                    "--precision", "fp32") == 21
    assert "build() raised RuntimeError: weights file missing" in capsys.readouterr().err
    path, _ = _torch_factories(tmp_path)
    assert _convert(Path(f"{path}:two_inputs"), tmp_path / "c.edgebundle", keys[0], "--precision", "fp32",
                    "--eval", str(_xy(tmp_path, 3))) == 21
    err = capsys.readouterr().err
    assert "forward() fails on the export example" in err and "\x1b[" not in err, err  # the model's own reason


def _xy(folder: Path, width: int) -> Path:
    """An .npz for TwoInputs whose x has `width` features (8 fits the model)."""
    rng = np.random.default_rng(13)
    np.savez(folder / "xy.npz", x=rng.normal(size=(4, width)).astype(np.float32),
             y=rng.normal(size=(4, 4)).astype(np.float32))
    return folder / "xy.npz"


def test_a_keras_model_with_an_unknown_custom_layer_says_how_to_convert_it(keys, tmp_path, capsys):
    """A .keras file with a custom layer (its code not imported here) gave one line of several thousand characters
    (Keras prints the model's whole config) and no way out. The line is short and names the SavedModel route."""
    import zipfile

    import tensorflow as tf

    inp = tf.keras.Input((4,))
    tf.keras.Model(inp, tf.keras.layers.Dense(2)(tf.keras.layers.Activation("relu")(inp))).save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as src, zipfile.ZipFile(tmp_path / "custom.keras", "w") as dst:
        for item in src.infolist():  # the Activation layer becomes a custom class no process here has the code of
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                layer = next(ly for ly in config["config"]["layers"] if ly["class_name"] == "Activation")
                layer.update(module=None, class_name="EdgekitNoSuchLayer", registered_name="edgekit>EdgekitNoSuchLayer")
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    assert _convert(tmp_path / "custom.keras", tmp_path / "c.edgebundle", keys[0], "--precision", "fp32") == 21
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 1000 and "model.export('saved_model_dir')" in err[0], err


def test_a_calibration_folder_sorted_into_named_class_folders_needs_no_labels(keys, tmp_path, capsys):
    """A calibration folder laid out as a training set (cat/, dog/) without --labels was refused: 'class folder
    'cat' is neither a label name nor a class index'. Calibration needs no labels: every image below it is read.
    Eval data still needs the classes, and the line says how to give them."""
    data = tmp_path / "train"
    for name, seed in (("cat", 1), ("dog", 2)):
        _noise_photos(data / name, 3, (16, 16), seed=seed)
    model = halves_model(tmp_path / "halves.onnx")
    assert _convert(model, tmp_path / "h.edgebundle", keys[0], "--calibration", str(data), "--force") == 0
    assert _convert(model, tmp_path / "e.edgebundle", keys[0], "--calibration", str(data), "--eval", str(data)) == 22
    assert "pass --labels FILE with the class names" in capsys.readouterr().err


def test_mean_and_std_that_cannot_fit_the_input_are_usage_errors(keys, tmp_path, capsys):
    """--mean with 2 values for a 3-channel input failed at the first image with numpy's 'operands could not be
    broadcast' (exit 22), and --std 0 only at the end, as an invalid manifest (exit 15). Both are refused up front."""
    photos = _noise_photos(tmp_path / "photos", 2, (16, 16), seed=3)
    model = halves_model(tmp_path / "halves.onnx")
    assert _convert(model, tmp_path / "a.edgebundle", keys[0], "--calibration", str(photos), "--mean", "0.5,0.5") == 2
    assert "--mean has 2 values; input image has 3 channels" in capsys.readouterr().err
    assert _convert(model, tmp_path / "b.edgebundle", keys[0], "--precision", "fp32", "--std", "0,1,1") == 2
    assert "--std values divide the pixels" in capsys.readouterr().err
    # --color GRAY for a colour input: the converter died in ORT (exit 1), fp32 wrote a bundle failing every image
    assert _convert(model, tmp_path / "c.edgebundle", keys[0], "--precision", "fp32", "--color", "GRAY") == 2
    assert "--color GRAY gives one channel; input image has 3" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--name", "my model/v2"], ["--model-version", "0"], ["--top-k", "0"]])
def test_a_name_or_version_the_manifest_refuses_is_a_usage_error_up_front(option, keys, tmp_path, capsys):
    """--name 'my model/v2', --model-version 0 or --top-k 0 ran the whole conversion and then failed writing the
    bundle with exit 15, 'invalid bundle manifest' (a bundle's code). The parser refuses them now: exit 2."""
    with pytest.raises(SystemExit) as stop:
        _convert(halves_model(tmp_path / "h.onnx"), tmp_path / "h.edgebundle", keys[0], "--precision", "fp32", *option)
    assert stop.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "h.edgebundle.report.json").exists()


def test_a_conv_head_classifier_with_unit_axes_stays_a_classifier(keys, tmp_path, capsys):
    """Output [1, C, 1, 1] (SqueezeNet-style conv head) is class scores with unit axes, not a map: its bundle keeps
    top-k classes while [1, C, H, W] maps get raw outputs."""
    w = np.random.default_rng(14).normal(size=(5, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["g"]), helper.make_node("Conv", ["g", "w"], ["scores"])],
        "head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5, 1, 1])], [numpy_helper.from_array(w, "w")])
    out = tmp_path / "head.edgebundle"
    assert _convert(_save(graph, tmp_path / "head.onnx"), out, keys[0], "--precision", "fp32") == 0
    assert _manifest(out)["postprocess"]["kind"] == "classification"


def test_one_damaged_image_does_not_end_a_folder_run(map_bundle, keys, tmp_path, capsys):
    """`run --source FOLDER` stopped at the first truncated JPEG with exit 70 ('is not a readable image'), whatever
    the folder held after it. The damaged file is skipped with a warning; a folder with no readable image is
    still refused (70)."""
    _, out, photo = map_bundle
    folder = tmp_path / "camera"
    folder.mkdir()
    (folder / "0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for name in ("0002.png", "0003.png"):
        (folder / name).write_bytes(photo.read_bytes())
    results = tmp_path / "r.jsonl"
    assert agent_main(["run", str(out), "--source", str(folder), "--output", str(results), "--trust",
                       str(keys[1])]) == 0
    assert [json.loads(line)["image"] for line in results.read_text().splitlines()] == ["0002.png", "0003.png"]
    (folder / "0002.png").unlink(), (folder / "0003.png").unlink()
    assert agent_main(["run", str(out), "--source", str(folder), "--trust", str(keys[1])]) == 70


def test_format_auto_says_why_a_candidate_could_not_be_built(keys, tmp_path, capsys):
    """`--format auto` printed 'tflite int8-static (could not be built)' and nothing more; the reason was only in the
    report. The summary line now carries it."""
    model = token_classifier(tmp_path / "tokens.onnx")
    np.savez(tmp_path / "ids.npz", ids=np.random.default_rng(15).integers(0, VOCAB, (16, STEPS)))
    assert convert_main(["convert", str(model), "--format", "auto", "--profile", "raspberry-pi-4", "--key",
                         str(keys[0]), "--out", str(tmp_path / "a.edgebundle"), "--calibration",
                         str(tmp_path / "ids.npz"), "--bench-runs", "3", "--force"]) == 0
    assert "(could not be built: TFLite int8-static through onnx2tf needs float inputs" in capsys.readouterr().out


def test_an_out_path_that_is_a_device_or_pipe_is_refused(keys, tmp_path, capsys):
    """`--out /dev/null` (a dry run, as root) replaced /dev/null with the bundle file: the atomic rename swaps
    whatever is at the path. A path that exists and is not a regular file is now refused before anything runs
    (a named pipe stands in for the device here)."""
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert _convert(halves_model(tmp_path / "h.onnx"), pipe, keys[0], "--precision", "fp32") == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert pipe.is_fifo()


def test_eval_labels_the_model_cannot_output_are_refused(keys, tmp_path, capsys):
    """Eval labels 0..9 for a four-class model converted with 'top-1 float 5.00%': labels the model can never output
    (1-based, or another model's) make the accuracy and the gate's top-1 drop meaningless. Exit 22, one line."""
    rng = np.random.default_rng(16)
    np.savez(tmp_path / "eval.npz", image=rng.random((12, 3, 8, 8)).astype(np.float32), labels=np.arange(1, 13) % 10)
    assert _convert(halves_model(tmp_path / "h.onnx"), tmp_path / "h.edgebundle", keys[0], "--precision", "fp32",
                    "--eval", str(tmp_path / "eval.npz")) == 22
    assert "eval labels range 0..9 but output scores has 4 classes" in capsys.readouterr().err


def test_a_layout_that_makes_no_image_is_named_with_the_fix(keys, tmp_path, capsys):
    """--layout NHWC on an NCHW model made 'images' of 8 channels: the conversion died in ONNX Runtime ('Got invalid
    dimensions'). An input with other than 1 or 3 channels gets no image preprocessing, and image data for it says
    so, naming the layout."""
    photos = _noise_photos(tmp_path / "photos", 2, (16, 16), seed=4)
    assert _convert(halves_model(tmp_path / "h.onnx"), tmp_path / "h.edgebundle", keys[0], "--layout", "NHWC",
                    "--calibration", str(photos)) == 22
    assert "is float32[1, 3, 8, 8] (NHWC): give an .npz with one array per model input, or the right --layout" \
        in capsys.readouterr().err
