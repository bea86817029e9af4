"""Issue 14 "done when": a real Ultralytics YOLOv8n export converts with only profile/calibration/key flags into a
bundle that draws boxes on a real video and a real photo, fp16 passes the detection gate, int8 keeps the scores.
Each test converts the real model (minutes on 2 cores): marker slow."""

from __future__ import annotations

import json

import pytest

from converter.cli import main as convert_main
from edge_agent.cli import main as agent_main

from .detector_data import MEGAMIND, VTEST, held_out_score, photos, split_frames, yolo_onnx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from types import SimpleNamespace

    from edge_agent.bundle import generate_keypair

    key, pub = generate_keypair(tmp_path_factory.mktemp("keys"))
    return SimpleNamespace(key=key, pub=pub)


def convert(keys, out, *extra):
    return convert_main(["convert", str(yolo_onnx()), "--profile", "raspberry-pi-4", "--key", str(keys.key),
                         "--out", str(out), "--bench-runs", "0", "--json", *extra])


def face_score(keys, bundle, photo, capsys) -> float:
    capsys.readouterr()
    assert agent_main(["run", str(bundle), str(photo), "--trust", str(keys.pub), "--json"]) == 0
    dets = json.loads(capsys.readouterr().out)["detections"]
    faces = [d for d in dets if d["name"] == "FACE_FEMALE"]
    assert faces, dets
    x1, y1, x2, y2 = faces[0]["box"]  # the astronaut's face, about x 180-275, y 80-175 of 512x512
    assert 150 < x1 < 210 and 50 < y1 < 110 and 240 < x2 < 310 and 140 < y2 < 210
    return faces[0]["score"]


def test_yolo_export_fp16_is_a_detection_bundle_that_passes_its_gate(keys, tmp_path, capsys):
    """Defect 1: every bundle was `classification` (class indices like 919 on video); defect 2: the gate scored
    (1, 22, 2100) as a sequence and refused even fp16."""
    pics = photos(tmp_path / "photos")
    out = tmp_path / "yolo-fp16.edgebundle"
    assert convert(keys, out, "--precision", "fp16", "--calibration", str(pics)) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    acc = report["measurements"]["accuracy"]
    assert acc["passed"] and acc["agreement_metric"] == "box_match_iou>=0.5" and acc["agreement"] == 1.0
    assert face_score(keys, out, pics / "astronaut.png", capsys) > 0.8
    rc = agent_main(["run", str(out), "--source", str(VTEST), "--trust", str(keys.pub), "--max-frames", "40",
                     "--output", str(tmp_path / "r.jsonl"), "--annotate", str(tmp_path / "boxes.avi")])
    assert rc == 0
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == 40 and all(r["kind"] == "detection" for r in records)
    names = {d["name"] for r in records for d in r["detections"]}
    assert names and all(not n.isdigit() for n in names)  # class names from the model's metadata
    assert (tmp_path / "boxes.avi").stat().st_size > 10_000


def test_yolo_export_int8_onnx_keeps_its_scores(keys, tmp_path, capsys):
    """Defect 4: ONNX int8 capped scores at 0.50 (the face at 0.83 came out 0.50) and lost boxes: the decode
    head was quantized with one scale for pixels and probabilities. Only profile/calibration/key flags."""
    pics = photos(tmp_path / "photos")
    out = tmp_path / "yolo-int8.edgebundle"
    rc = convert(keys, out, "--calibration", str(VTEST), "--calibration-samples", "24", "--eval", str(pics),
                 "--quantize-ops", "all")
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8-static"
    quantize = next(p for p in report["passes"] if p["pass"] == "quantize")
    assert quantize["float_head"]["nodes"] > 10
    # issue 15: compensation is decided on the detection gate's own score (matched boxes), like a classifier's;
    # plain int8 matches every float box on these photos, so auto fits nothing (the fit alone took 150 s here)
    assert [c["compensation"] for c in quantize["compensation"]["candidates"]] == ["none"]
    assert quantize["compensation"]["candidates"][0]["agreement"] == 1.0
    assert quantize["compensation"]["note"].startswith("not fitted")
    assert report["measurements"]["accuracy"]["agreement"] >= 0.95
    assert face_score(keys, out, pics / "astronaut.png", capsys) > 0.7


def test_yolo_export_int8_tflite_has_boxes(keys, tmp_path, capsys):
    """Defect 3: TFLite full-int8 YOLOv8 gave zero detections (pixel boxes and 0-1 scores shared one int8 output
    tensor) while the report said cosine 0.9966. Now the head stays float and the gate counts boxes."""
    pics = photos(tmp_path / "photos")
    out = tmp_path / "yolo-int8.tflite.edgebundle"
    rc = convert(keys, out, "--format", "tflite", "--calibration", str(VTEST), "--calibration-samples", "16",
                 "--eval", str(pics), "--sensitivity", "off")
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "tflite" and report["precision"].startswith("int8")
    mixed = next(p for p in report["passes"] if p["pass"] == "tflite-mixed-precision")
    assert mixed["float_head"]["layers"] > 5
    acc = report["measurements"]["accuracy"]
    assert acc["agreement"] >= 0.95 and acc["converted_boxes"] == acc["float_boxes"] > 0
    assert face_score(keys, out, pics / "astronaut.png", capsys) > 0.6


@pytest.mark.timeout(1200)  # bias compensation and, when it is not enough, the float-layer search: minutes
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_yolo_int8_keeps_95_percent_of_float_boxes_on_held_out_frames(fmt, keys, tmp_path, capsys):
    """Issue 14 "done when": int8 matches >= 95 % of float's boxes, judged on frames the conversion never saw
    (not calibrated on, not selected on). Megamind.avi: a face in most frames, boxes of classes the model knows.
    Plain int8 (float head only) kept 0.944 (ONNX) / 0.929 (TFLite) of them, int8 scoring lost boxes at about half
    of float's score; ONNX now passes with bias compensation, TFLite with its first layers float (input-first walk)."""
    selection, held_out = split_frames(MEGAMIND, tmp_path / "frames", 24, 40, calibration=16)
    out = tmp_path / f"yolo-face-{fmt}.edgebundle"
    # TFLite rebuilds the model for each candidate (a minute each here): measure 4 layers, walk at most 12
    lean = ["--sensitivity-candidates", "4", "--max-float-layers", "12"] if fmt == "tflite" else []
    rc = convert(keys, out, "--format", fmt, "--calibration", str(MEGAMIND), "--calibration-samples", "16",
                 "--eval", str(selection), *lean)
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["precision"].startswith("int8")
    score = held_out_score(out, keys.pub, yolo_onnx(), held_out, tmp_path / "unpacked")
    assert score["float_boxes"] >= 60, score
    assert score["agreement"] >= 0.95, (score, report["measurements"].get("mixed_precision"))
