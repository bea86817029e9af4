"""Issue 14: real detectors end to end, each defect with a test that failed before.

Fast tests here; conversions of the real YOLOv8n export are in test_detectors_slow.py (marker slow).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.cli import main as convert_main
from converter.data.image_folder import load_image_folder
from edge_agent.bundle import Preprocess, TensorSpec
from edge_agent.cli import main as agent_main

from .camera_helpers import detector_bundle, write_video
from .detector_data import blazeface_anchors, blazeface_tflite, photos


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from types import SimpleNamespace

    from edge_agent.bundle import generate_keypair

    key, pub = generate_keypair(tmp_path_factory.mktemp("keys"))
    return SimpleNamespace(key=key, pub=pub)


def test_blazeface_anchor_head_draws_the_astronauts_face(keys, tmp_path, capsys):
    """Defect 5: anchor-based heads (raw regressors + anchors) were unsupported; now the anchors go into the
    manifest and `edge-agent run BUNDLE photo.png` (which ignored detection manifests) gives the face box."""
    pics = photos(tmp_path / "photos")
    np.save(tmp_path / "anchors.npy", blazeface_anchors())
    out = tmp_path / "face.edgebundle"
    rc = convert_main(["convert", str(blazeface_tflite()), "--profile", "raspberry-pi-4", "--anchors",
                       str(tmp_path / "anchors.npy"), "--mean", "0.5", "--std", "0.5", "--calibration", str(pics),
                       "--key", str(keys.key), "--out", str(out), "--bench-runs", "0", "--json"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = agent_main(["run", str(out), str(pics / "astronaut.png"), "--trust", str(keys.pub), "--json"])
    assert rc == 0
    dets = json.loads(capsys.readouterr().out)["detections"]
    assert len(dets) == 1 and dets[0]["score"] > 0.8
    x1, y1, x2, y2 = dets[0]["box"]  # the face in the 512x512 photo: about x 180-275, y 80-175
    assert 160 < x1 < 200 and 60 < y1 < 100 and 250 < x2 < 300 and 150 < y2 < 200


def _two_output_onnx(path):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    a = helper.make_tensor_value_info("protos", TensorProto.FLOAT, [1, 3, 32, 32])
    b = helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 3, 32])
    nodes = [helper.make_node("Identity", ["images"], ["protos"]),
             helper.make_node("ReduceMean", ["images"], ["dets"], axes=[3], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "two", [x], [a, b]), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_multi_output_detector_must_name_its_output_and_the_failure_leaves_a_report(keys, tmp_path, capsys):
    """Defect 5: output 0 was used silently; defect 6: a failed conversion wrote no report."""
    src = _two_output_onnx(tmp_path / "two.onnx")
    out = tmp_path / "two.edgebundle"
    rc = convert_main(["convert", str(src), "--task", "detect", "--precision", "fp32", "--profile", "raspberry-pi-4",
                       "--key", str(keys.key), "--out", str(out), "--bench-runs", "0"])
    err = capsys.readouterr().err
    assert rc == 21 and "--output-role" in err and "protos" in err and "dets" in err
    report = json.loads((tmp_path / "two.edgebundle.report.json").read_text())
    assert "--output-role" in report["error"]
    rc = convert_main(["convert", str(src), "--task", "detect", "--output-role", "dets", "--precision", "fp32",
                       "--profile", "raspberry-pi-4", "--key", str(keys.key), "--out", str(out), "--bench-runs", "0"])
    assert rc == 0, capsys.readouterr().err
    from edge_agent.bundle import TrustStore, verify_bundle

    manifest = verify_bundle(out, TrustStore.from_paths([keys.pub]), unpack_to=tmp_path / "u").manifest
    assert manifest.postprocess.kind == "detection" and manifest.postprocess.options["output"] == "dets"
    # the resize is named exactly, so the device resizes as calibration did (OpenCV INTER_LINEAR, letterbox)
    assert (manifest.preprocess.resize, manifest.preprocess.resampler) == ("letterbox", "opencv")


@pytest.mark.parametrize("resize", ["letterbox", "bilinear"])
def test_the_agent_preprocesses_a_frame_exactly_as_the_converter_calibrated_on_it(tmp_path, resize):
    """Issue 14: host calibration and device preprocessing must stay identical. The manifest names the resampler;
    the converter's video reader and the camera pipeline's Preprocessor then give the same tensor, bit for bit
    (Pillow's antialiased BILINEAR and OpenCV's INTER_LINEAR differ: naming the library is what makes it exact)."""
    import cv2

    from converter.data.video import load_video
    from edge_agent.bundle import FileEntry, Manifest
    from edge_agent.pipeline.sources import Frame
    from edge_agent.pipeline.stages import Preprocessor

    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), (5, 5), 0)
    video = write_video(tmp_path / "one.avi", [frame])
    spec = TensorSpec("images", "float32", [1, 3, 48, 64], "NCHW")
    tensors = {}
    for resampler in ("opencv", "pillow"):
        pre = Preprocess(kind="image", color="RGB", size=[48, 64], resize=resize, resampler=resampler)
        host = load_video(video, [spec], pre, n=1)[0]
        manifest = Manifest(name="m", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime",
                            precision="fp32", model_file="model/model.onnx", inputs=[spec],
                            outputs=[TensorSpec("out", "float32", [1, 8])], preprocess=pre,
                            files=[FileEntry("model/model.onnx", 1, "0" * 64)])
        manifest = Manifest.from_json(manifest.to_json())  # through the signed JSON, as on the device
        device = Preprocessor(manifest)(Frame(0, frame, 0.0)).feeds["images"][0]
        assert manifest.preprocess.resampler == resampler
        np.testing.assert_array_equal(host, device)
        tensors[resampler] = device
    assert np.abs(tensors["opencv"] - tensors["pillow"]).max() > 0.01  # the two libraries do differ


def test_bad_detection_settings_stop_the_pipeline_with_75_and_missing_annotate_folder_73(keys, tmp_path, capsys):
    """Defect 5: a head the options do not fit logged an error per frame and exited 0;
    defect 6: --annotate into a missing folder exited 0."""
    rows = np.zeros((1, 6, 8), np.float32)
    video = write_video(tmp_path / "v.avi", [np.zeros((48, 64, 3), np.uint8)] * 3)
    bad = detector_bundle(tmp_path, keys.key, {"output0": rows}, {"format": "yolo", "output": "boxes"})
    rc = agent_main(["run", str(bad), "--source", str(video), "--trust", str(keys.pub)])
    assert rc == 75 and "'boxes' is not an output" in capsys.readouterr().err
    good = detector_bundle(tmp_path, keys.key, {"output0": rows}, {"format": "yolo"})
    rc = agent_main(["run", str(good), "--source", str(video), "--trust", str(keys.pub),
                     "--annotate", str(tmp_path / "missing" / "out.avi")])
    assert rc == 73 and "does not exist" in capsys.readouterr().err


def test_grayscale_and_unreadable_images_in_a_colour_calibration_folder(tmp_path):
    """Defect 6: a grayscale picture crashed the load (`all input arrays must have the same shape`), one
    unreadable file aborted it; now gray becomes three channels and --skip-unreadable-images counts the bad."""
    folder = photos(tmp_path / "cal")  # astronaut (RGB) + camera (grayscale)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    spec = TensorSpec("images", "float32", [1, 3, 64, 64], "NCHW")
    pre = Preprocess(kind="image", color="RGB", size=[64, 64], resize="letterbox")
    from converter.errors import DataError

    with pytest.raises(DataError, match="--skip-unreadable-images"):
        load_image_folder(folder, [spec], pre, None, flat=True)
    data = load_image_folder(folder, [spec], pre, None, skip_unreadable=True, flat=True)
    assert data.inputs["images"].shape == (2, 3, 64, 64) and len(data.skipped) == 1
    gray = data.inputs["images"][1]
    assert np.allclose(gray[0], gray[1]) and np.allclose(gray[1], gray[2])


def test_detection_gate_counts_lost_extra_and_borderline_boxes_and_reads_labels(tmp_path):
    """Defect 2: the gate had no notion of boxes; now it matches them (IoU >= 0.5, same class) and scores mAP@0.5
    against float and against labels (COCO JSON and YOLO txt give the same truth)."""
    from converter.accuracy.detection import DetectionScorer
    from converter.accuracy.ground_truth import ground_truth_for
    from converter.data import Dataset

    def out(rows):  # YOLOv8 (1, 4+C, N) with C=2, N=8 candidates, boxes in 64x64 input pixels
        a = np.zeros((8, 6), np.float32)
        a[: len(rows)] = rows
        return a.T[None]

    box_a, box_b = [16, 16, 16, 16], [48, 48, 16, 16]
    ref = [np.concatenate([out([[*box_a, 0.9, 0], [*box_b, 0, 0.27]]), out([[*box_a, 0.9, 0]])])]
    same = [np.concatenate([out([[*box_a, 0.8, 0], [*box_b, 0, 0.23]]), out([[*box_a, 0.9, 0]])])]  # 0.23: borderline
    lost_extra = [np.concatenate([out([[*box_a, 0, 0.9]]), out([[*box_a, 0.9, 0], [*box_b, 0.6, 0]])])]
    scorer = DetectionScorer({"format": "yolo"}, ["output0"], 2, (64, 64))
    s = scorer(ref, same)
    assert (s["float_boxes"], s["lost_boxes"], s["extra_boxes"], s["agreement"]) == (3, 0, 0, 1.0)
    s = scorer(ref, lost_extra)  # sample 0: box a in the wrong class (lost + extra), box b missing; 1: an extra box
    assert (s["lost_boxes"], s["extra_boxes"]) == (2, 2) and s["agreement"] == pytest.approx(1 / 5)
    assert s["map50_vs_float"] < 0.6

    data = Dataset({"images": np.zeros((2, 3, 64, 64), np.float32)}, files=["a.jpg", "b.jpg"],
                   frames_hw=[(128, 128), (128, 128)])
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "a.txt").write_text("0 0.25 0.25 0.25 0.25\n1 0.75 0.75 0.25 0.25\n")
    (tmp_path / "yolo" / "b.txt").write_text("0 0.25 0.25 0.25 0.25\n")
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
            "annotations": [{"image_id": 1, "category_id": 7, "bbox": [16, 16, 32, 32]},
                            {"image_id": 1, "category_id": 9, "bbox": [80, 80, 32, 32]},
                            {"image_id": 2, "category_id": 7, "bbox": [16, 16, 32, 32]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    for labels in (tmp_path / "yolo", tmp_path / "coco.json"):
        truth = ground_truth_for(labels, data, (64, 64), "letterbox", ["cat", "dog"])
        np.testing.assert_allclose(truth[0][0], [[8, 8, 24, 24], [40, 40, 56, 56]])
        scored = DetectionScorer({"format": "yolo"}, ["output0"], 2, (64, 64), truth)(ref, lost_extra)
        assert scored["float_map50"] == 1.0 and scored["map50_drop_points"] > 50


def test_sigterm_during_a_conversion_removes_its_temporary_folder(keys, tmp_path):
    """Defect 6: SIGTERM left a 73 MB temporary folder behind; now it unwinds like Ctrl-C (exit 130)."""
    import os

    from .detector_data import yolo_onnx
    from .fault_helpers import sigterm_once

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = ["-m", "converter.cli", "convert", str(yolo_onnx()), "--precision", "fp32", "--profile",
           "raspberry-pi-4", "--calibration", str(photos(tmp_path / "photos")), "--key", str(keys.key),
           "--out", str(tmp_path / "y.edgebundle"), "--bench-runs", "0"]
    returncode, err = sigterm_once(cmd, env, "edgekit-convert-*/*", tmp)
    assert returncode == 130, err
    assert not list(tmp.glob("edgekit-convert-*"))


def test_an_input_shape_the_graph_cannot_take_is_one_line_and_exit_21(keys, tmp_path, capsys):
    """Defect 6: shape problems surfaced as raw ONNX Runtime errors with exit 1."""
    from .detector_data import yolo_onnx

    rc = convert_main(["convert", str(yolo_onnx()), "--input-shape", "1x3x100x100", "--precision", "fp32",
                       "--profile", "raspberry-pi-4", "--calibration", str(photos(tmp_path / "p")), "--key",
                       str(keys.key), "--out", str(tmp_path / "y.edgebundle"), "--bench-runs", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 21 and len(err) == 1 and "--input-shape" in err[0] and "Concat" in err[0]


def _box_and_class_onnx(path, rng):
    """A classifier with a box-regression output first (like the face network of issue 14) and logits second."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])]
    inits = [onnx.numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "wb"),
             onnx.numpy_helper.from_array(rng.normal(size=(16, 10)).astype(np.float32), "wl")]
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]), helper.make_node("MatMul", ["x", "wl"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "cls", [x], outs, inits), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_multi_output_classifier_serves_and_gates_the_declared_output(keys, tmp_path, capsys, caplog):
    """Defect 5: a multi-output classifier was read at output 0 (its box regressor) by the agent and the gate.
    Failed before: the manifest had no `output`, `run` gave argmax(boxes) and the gate's top-1 was boxes'."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    src = _box_and_class_onnx(tmp_path / "cls.onnx", rng)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    boxes, logits = (np.concatenate(o) for o in zip(*[sess.run(None, {"x": x[i:i + 1]}) for i in range(len(x))]))
    labels = logits.argmax(1)
    assert (boxes.argmax(1) != labels).mean() > 0.5  # reading output 0 would give other answers
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    out = tmp_path / "cls.edgebundle"
    rc = convert_main(["convert", str(src), "--output-role", "logits", "--precision", "fp32", "--profile",
                       "raspberry-pi-4", "--eval", str(tmp_path / "eval.npz"), "--key", str(keys.key), "--out", str(out),
                       "--bench-runs", "0", "--json"])
    assert rc == 0, capsys.readouterr().err
    acc = json.loads(capsys.readouterr().out)["measurements"]["accuracy"]
    assert acc["float_top1_accuracy"] == 1.0  # the gate scored the logits (boxes would match the labels < 50 %)
    np.save(tmp_path / "one.npy", x[3:4])
    rc = agent_main(["run", str(out), str(tmp_path / "one.npy"), "--trust", str(keys.pub), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["label"] == int(labels[3])
    # Without --output-role the served output is still written down (output 0, with a warning), never implied.
    rc = convert_main(["convert", str(src), "--precision", "fp32", "--profile", "raspberry-pi-4", "--key", str(keys.key),
                       "--out", str(tmp_path / "first.edgebundle"), "--bench-runs", "0"])
    assert rc == 0 and "--output-role" in caplog.text
    from edge_agent.bundle import TrustStore, verify_bundle

    manifest = verify_bundle(tmp_path / "first.edgebundle", TrustStore.from_paths([keys.pub]), unpack_to=tmp_path / "u").manifest
    assert manifest.postprocess.options["output"] == "boxes"


def test_tflite_outputs_of_one_frame_survive_the_next_inference():
    """The pipeline hands a frame's outputs to the postprocess thread while the interpreter already runs the next
    frame: the arrays run_list returns must be the caller's own (not views of the interpreter's buffers)."""
    from edge_agent.runtimes.litert_runtime import TFLiteModel

    model = TFLiteModel(blazeface_tflite(), threads=1)
    shape = model.input_details[0]["shape"]
    first = model.run_list([np.full(shape, -0.5, np.float32)])
    kept = [o.copy() for o in first]
    second = model.run_list([np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)])
    assert all(np.array_equal(a, b) for a, b in zip(first, kept))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
