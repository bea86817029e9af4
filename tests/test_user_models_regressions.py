"""Regressions found reviewing the user-model fixes: quantized .tflite sources with uint8 inputs, PyTorch image
models with uint8 data, CLI error handling, EXIF, classification detection and ONNX Runtime input errors.

Every model is small and real (Keras/TFLiteConverter, torch, onnx.helper); runs go through the real CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main as convert_main
from edge_agent.bundle import generate_keypair
from edge_agent.cli import main as agent_main


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _convert(model: Path | str, out: Path, key: Path, *extra: str) -> int:
    return convert_main(["--quiet", "convert", str(model), "--profile", "raspberry-pi-4", "--key", str(key),
                         "--out", str(out), "--bench-runs", "0", *extra])


def _tinted_photos(folder: Path, hw: tuple[int, int]) -> list[Path]:
    """Class folders of PNGs with different colour tints (so a colour-sensitive model answers differently)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for i, tint in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 240, 240), (5, 5, 5), (128, 60, 200)]):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-5, 6, (*hw, 3))
        pixels = np.clip(np.array(tint)[None, None, :] + noise, 0, 255).astype(np.uint8)
        paths.append(folder / str(i % 2) / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _quant_uint8_tflite(path: Path, mean: float, std: float) -> Path:
    """A Keras colour classifier trained on (pixels/255 - mean)/std, converted by TFLiteConverter to full int8 with
    uint8 input/output: the input carries quantization parameters (like Coral / TF-Hub *_quant.tflite files)."""
    import tensorflow as tf
    from tensorflow import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
    rng = np.random.default_rng(0)
    x = ((rng.random((256, 16, 16, 3)) - mean) / std).astype(np.float32)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, x.mean(axis=(1, 2)).argmax(1), epochs=3, verbose=0)

    def representative():
        for sample in x[:64]:
            yield [sample[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    path.write_bytes(conv.convert())
    return path


def _direct_litert(model: Path, pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The file run by LiteRT directly, its uint8 input quantized with the input's own parameters."""
    from edge_agent.runtimes.litert_runtime import open_interpreter

    interpreter, _ = open_interpreter(model, threads=1)
    detail = interpreter.get_input_details()[0]
    scale, zp = detail["quantization"]
    assert scale > 0, "the test model's input must carry quantization parameters"
    x = (pixels.astype(np.float32) / 255 - mean) / std
    interpreter.set_tensor(detail["index"], np.clip(np.round(x / scale) + zp, 0, 255).astype(np.uint8)[None])
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    oscale, ozp = out["quantization"]
    return (interpreter.get_tensor(out["index"])[0].astype(np.float32) - ozp) * oscale


def test_a_quantized_uint8_tflite_keeps_the_users_normalisation(keys, tmp_path, capsys):
    """An existing full-int8 .tflite whose uint8 input has quantization parameters got scale 1/mean 0/std 1 (the
    --mean/--std ignored) and eval data cast to uint8: on the device every image saturated the input to one answer."""
    from PIL import Image

    mean, std = 0.5, 0.25
    model = _quant_uint8_tflite(tmp_path / "colour_quant.tflite", mean, std)
    photos = _tinted_photos(tmp_path / "eval", (16, 16))
    out = tmp_path / "quant.edgebundle"
    assert _convert(model, out, keys[0], "--scale", str(1 / 255), "--mean", str(mean), "--std", str(std),
                    "--eval", str(tmp_path / "eval")) == 0
    capsys.readouterr()
    assert agent_main(["run", str(out), *map(str, photos), "--trust", str(keys[1]), "--json"]) == 0
    got = [r["label"] for r in json.loads(capsys.readouterr().out)]
    want = [int(_direct_litert(model, np.asarray(Image.open(p).convert("RGB")), mean, std).argmax()) for p in photos]
    assert len(set(want)) > 1, "the test model must tell the tints apart"
    assert got == want


TORCH_IMAGE_MODELS = '''
import torch


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3)

    def forward(self, x, mask=None):
        y = self.head(self.conv(x).mean((2, 3)))
        return y if mask is None else y * mask


def conv():
    torch.manual_seed(0)
    return Conv().eval()
'''


def test_a_pytorch_image_model_with_uint8_npz_data_converts(keys, tmp_path, capsys):
    """A Conv2d factory whose .npz data is uint8 pixels died in the export (exit 21, 'Input type (unsigned char) and
    bias type (float) should be the same'): the export example took the data's integer dtype. Its
    forward(x, mask=None) takes one input, not two."""
    path = tmp_path / "image_models.py"
    path.write_text(TORCH_IMAGE_MODELS)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "pixels.npz", x=rng.integers(0, 256, (16, 3, 12, 12)).astype(np.uint8),
             labels=rng.integers(0, 3, 16))
    out = tmp_path / "conv.edgebundle"
    assert _convert(f"{path}:conv", out, keys[0], "--input-shape", "1x3x12x12", "--precision", "fp32",
                    "--eval", str(tmp_path / "pixels.npz")) == 0
    from edge_agent.bundle import read_manifest_unverified

    inputs = read_manifest_unverified(out).inputs
    assert [(t.dtype, t.shape) for t in inputs] == [("float32", [1, 3, 12, 12])]


def test_forward_with_a_defaulted_argument_takes_one_input(tmp_path):
    """TorchScript's schema gives `mask=None` a default of None: `default_value is None` counted it as an input."""
    import importlib.util

    import torch

    from converter.importers.torch_module import _forward_inputs

    (tmp_path / "regression_conv_models.py").write_text(TORCH_IMAGE_MODELS)
    spec = importlib.util.spec_from_file_location("regression_conv_models", tmp_path / "regression_conv_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.conv()
    assert _forward_inputs(model) == ["x"]
    assert _forward_inputs(torch.jit.script(model)) == ["x"]


def test_a_broken_pipe_other_than_stdout_is_a_failure(capsys):
    """Every CLI took any BrokenPipeError for `| head` closing stdout, so an SSH channel closing under
    `edge-device setup` (asyncssh raises BrokenPipeError) exited 0 silently."""
    from edge_agent.errors import run_main

    def body() -> int:
        raise BrokenPipeError("channel closed")

    assert run_main("edge-device", body) != 0
    assert "edge-device: error:" in capsys.readouterr().err


def test_stdout_closed_by_its_reader_stops_quietly(tmp_path):
    """`edge-agent run ... --json | head`: the reader closing stdout gives no error line and no traceback, and exit
    141 (stdout-closed); a BrokenPipeError from elsewhere while stdout is a live pipe is a failure."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    head = "import sys\nfrom edge_agent.errors import run_main\ndef body():\n"
    flood = head + "    while True:\n        print('x' * 1000)\nsys.exit(run_main('edge-agent', body))\n"
    proc = subprocess.Popen([sys.executable, "-c", flood], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "error" not in err
    other = head + "    print('started')\n    raise BrokenPipeError('ssh channel closed')\n" \
        "sys.exit(run_main('edge-device', body))\n"
    done = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "edge-device: error:" in done.stderr and done.stdout == "started\n"


def _exif(entries: list[tuple[int, int, int, bytes | int]], data: bytes = b"") -> bytes:
    """A big-endian EXIF block: IFD0 `entries` (tag, type, count, 4 inline bytes or an offset into `data`)."""
    import struct

    base = 8 + 2 + 12 * len(entries) + 4
    out = b"MM\x00*" + struct.pack(">IH", 8, len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack(">HHI", tag, kind, count) + (struct.pack(">I", base + value) if isinstance(value, int) else value)
    return b"Exif\x00\x00" + out + b"\x00\x00\x00\x00" + data


def test_read_image_matches_opencv_for_rotated_malformed_and_16_bit_images(tmp_path):
    """ImageOps.exif_transpose raised struct.error ('argument out of range') on a photo whose EXIF has a signed
    rational over 0 besides its orientation; OpenCV reads it upright. read_image is the camera pipeline's imread."""
    import struct

    import cv2
    from PIL import Image

    from edge_agent.pipeline.preprocess import read_image

    rng = np.random.default_rng(6)
    pixels = (rng.random((24, 40, 3)) * 255).astype(np.uint8)
    rotated = _exif([(0x0112, 3, 1, b"\x00\x06\x00\x00")])
    malformed = _exif([(0x0112, 3, 1, b"\x00\x06\x00\x00"), (0x9201, 10, 1, 0)], struct.pack(">ii", -5, 0))
    for name, exif, subsampling in (("rotated.jpg", rotated, 2), ("malformed.jpg", malformed, 0)):
        Image.fromarray(pixels).save(tmp_path / name, quality=90, subsampling=subsampling, exif=exif)
        got, want = read_image(str(tmp_path / name)), cv2.imread(str(tmp_path / name))[..., ::-1]
        assert got.shape == want.shape == (40, 24, 3), name
        assert np.array_equal(got, want), name
    grey16 = (rng.random((10, 12)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    got = read_image(str(tmp_path / "grey16.png"))
    assert got.shape == (10, 12, 1)
    assert np.array_equal(got[..., 0], cv2.imread(str(tmp_path / "grey16.png"), cv2.IMREAD_GRAYSCALE))
    assert np.array_equal(got[..., 0], (grey16 >> 8).astype(np.uint8))


def _vector_model(path: Path, out_shape: list) -> Path:
    """x [1, 4] -> MatMul -> Reshape to `out_shape` ([]: a scalar, the rank an unknown-shape output reads as)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = int(np.prod(out_shape))
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(size=(4, size)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(out_shape, dtype=np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "vector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("shape, kind", [([3], "classification"), ([1, 1], "none"),
                                         ([], "classification"), ([1, 3], "classification"),
                                         ([1, 3, 8], "none")])
def test_score_outputs_of_any_rank_stay_classifiers(keys, tmp_path, shape, kind):
    """Outputs [C] and outputs of empty shape were classification bundles, then became postprocess `none`:
    only an output with 2 or more non-unit axes past the batch (a map, a sequence) serves raw outputs. One value
    per sample ([N, 1]) is served raw too: a softmax over it answered class 0 at 1.0 whatever the model said."""
    from edge_agent.bundle import read_manifest_unverified

    model = _vector_model(tmp_path / "vector.onnx", shape)
    out = tmp_path / "vector.edgebundle"
    assert _convert(model, out, keys[0], "--precision", "fp32") == 0
    manifest = read_manifest_unverified(out)
    assert manifest.postprocess.kind == kind, manifest.outputs


def test_calibration_from_a_video_the_agent_plays_too(keys, tmp_path):
    """The converter kept its own, shorter list of video suffixes: an MPEG-TS clip (.ts) the agent plays with
    --source was 'data must be an .npz file ..., a folder of images or a video file' (22) as --calibration."""
    import cv2
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "conv.onnx")
    writer = cv2.VideoWriter(str(tmp_path / "clip.ts"), cv2.VideoWriter_fourcc(*"MPEG"), 10, (32, 24))
    assert writer.isOpened()
    for i in range(12):
        writer.write((rng.random((24, 32, 3)) * 255).astype(np.uint8))
    writer.release()
    assert _convert(tmp_path / "conv.onnx", tmp_path / "conv.edgebundle", keys[0], "--calibration",
                    str(tmp_path / "clip.ts")) == 0


def test_a_state_input_without_a_batch_axis_runs_from_an_npz(keys, tmp_path, capsys):
    """A GRU-style model: x [1, 4] beside a state h [2, 1, 3] (layers, batch, hidden). `edge-agent run` read the
    state's 2 layers as 2 samples and refused the file ('different numbers of samples')."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_agent.cli import main as agent_main

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "h"], ["y"])], "gru_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "g.onnx"))
    out = tmp_path / "g.edgebundle"
    assert _convert(tmp_path / "g.onnx", out, keys[0], "--precision", "fp32", "--task", "none") == 0
    x, h = np.ones((1, 4), np.float32), np.zeros((2, 1, 3), np.float32)
    np.savez(tmp_path / "in.npz", x=x, h=h)
    capsys.readouterr()
    assert agent_main(["run", str(out), str(tmp_path / "in.npz"), "--trust", str(keys[1]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert np.allclose(np.array(record["outputs"][0]["data"]), (x @ np.arange(12).reshape(4, 3)) + h), record
