"""Detection postprocessing through the pipeline: a constructed ONNX detector in a signed bundle,
YOLO- and SSD-style outputs, score threshold, NMS and boxes mapped back through letterbox/resize."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.bundle import TrustStore, verify_bundle
from edge_agent.cli import main
from edge_agent.pipeline.detection import DetectionConfigError, DetectionOptions, nms
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.sinks import CollectSink
from edge_agent.pipeline.sources import open_source
from edge_agent.runtimes import load_session

from .camera_helpers import detector_bundle, write_video

FRAME_W, FRAME_H = 200, 100  # letterboxed into 64x64: scale 0.32, pad_y 16, pad_x 0


def yolo_output() -> np.ndarray:
    """YOLOv8-style (1, 4+C, N): rows cx, cy, w, h, score(person), score(car) in model pixels."""
    rows = [
        [32, 32, 32, 16, 0.90, 0.05],  # person -> frame [50, 25, 150, 75]
        [33, 32, 32, 16, 0.80, 0.02],  # duplicate person (IoU ~0.94) -> suppressed by NMS
        [32, 32, 32, 16, 0.10, 0.70],  # a car on the same spot: other class, kept
        [8, 24, 8, 8, 0.60, 0.00],     # small person -> frame [12.5, 12.5, 37.5, 37.5]
        [50, 40, 10, 10, 0.20, 0.10],  # below the score threshold
    ]
    rows += [[0, 0, 0, 0, 0, 0]] * 3  # padding candidates (N=8 > 6 attributes)
    return np.asarray(rows, np.float32).T[None]  # (1, 6, 8)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from types import SimpleNamespace

    from edge_agent.bundle import generate_keypair

    key, pub = generate_keypair(tmp_path_factory.mktemp("keys"))
    return SimpleNamespace(key=key, pub=pub)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8) for _ in range(6)]
    return write_video(tmp_path_factory.mktemp("det") / "street.avi", frames)


def run_bundle(bundle, pub, source_spec, tmp):
    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp / "unpacked")
    session = load_session(vb.unpacked_to, vb.manifest)
    sink = CollectSink()
    summary = Pipeline(open_source(str(source_spec)), session, vb.manifest, [sink]).run()
    return summary, sink.records


def test_yolo_detector_boxes_are_mapped_back_through_the_letterbox(keys, video, tmp_path):
    bundle = detector_bundle(tmp_path, keys.key, {"output0": yolo_output()},
                             {"format": "yolo", "score_threshold": 0.25, "iou_threshold": 0.45})
    summary, records = run_bundle(bundle, keys.pub, video, tmp_path)
    assert summary.frames == 6 and len(records) == 6
    for r in records:
        dets = r["detections"]
        assert [(d["name"], d["score"]) for d in dets] == [("person", 0.9), ("car", 0.7), ("person", 0.6)]
        np.testing.assert_allclose(dets[0]["box"], [50, 25, 150, 75], atol=0.01)
        np.testing.assert_allclose(dets[1]["box"], [50, 25, 150, 75], atol=0.01)
        np.testing.assert_allclose(dets[2]["box"], [12.5, 12.5, 37.5, 37.5], atol=0.01)


def test_ssd_detector_with_plain_resize_and_normalized_boxes(keys, video, tmp_path):
    boxes = np.asarray([[[0.25, 0.50, 0.75, 1.00],    # xyxy normalized -> frame [50, 50, 150, 100]
                         [0.26, 0.50, 0.75, 1.00],    # overlapping duplicate -> NMS
                         [0.00, 0.00, 0.10, 0.20]]], np.float32)  # -> [0, 0, 20, 20], class car
    scores = np.asarray([[[0.05, 0.90, 0.05], [0.10, 0.85, 0.05], [0.1, 0.2, 0.7]]], np.float32)  # background first
    bundle = detector_bundle(tmp_path, keys.key, {"boxes": boxes, "scores": scores},
                             {"format": "ssd", "background_class": 0, "score_threshold": 0.5},
                             resize="bilinear", labels=["background", "person", "car"])
    summary, records = run_bundle(bundle, keys.pub, video, tmp_path)
    assert summary.frames == 6
    dets = records[0]["detections"]
    assert [d["name"] for d in dets] == ["person", "car"]
    np.testing.assert_allclose(dets[0]["box"], [50, 50, 150, 100], atol=0.01)
    np.testing.assert_allclose(dets[1]["box"], [0, 0, 20, 20], atol=0.01)


def test_cli_writes_detections_and_an_annotated_video(keys, video, tmp_path, capsys):
    import cv2

    bundle = detector_bundle(tmp_path, keys.key, {"output0": yolo_output()}, {"format": "yolo"})
    out = tmp_path / "annotated.avi"
    code = main(["run", str(bundle), "--source", str(video), "--trust", str(keys.pub),
                 "--output", str(tmp_path / "r.jsonl"), "--annotate", str(out), "--max-frames", "4"])
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len(json.loads(lines[0])["detections"]) == 3
    cap = cv2.VideoCapture(str(out))
    n, green = 0, 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n += 1
        # the person box's top edge is drawn in green at y=25 between x=50 and x=150
        edge = img[25, 60:140].astype(int)
        green += int(np.mean((edge[:, 1] > 180) & (edge[:, 0] < 90) & (edge[:, 2] < 90)) > 0.8)
    assert n == 4 and green == 4


def test_nms_and_option_validation():
    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    scores = np.asarray([0.5, 0.9, 0.4], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]
    with pytest.raises(DetectionConfigError):
        DetectionOptions.from_manifest({"format": "retina"})
    with pytest.raises(DetectionConfigError):
        DetectionOptions.from_manifest({"scre_threshold": 0.3})


@pytest.mark.parametrize("layout,objectness,extras", [("channels-first", False, 0), ("rows", False, 0),
                                                      ("rows", True, 0), ("channels-first", False, 32)])
def test_yolo_decode_reads_only_the_anchors_that_pass_and_keeps_every_box(layout, objectness, extras):
    """The decoder drops anchors below the score floor before its per-anchor work (a few of thousands pass):
    the boxes, scores and classes must be exactly those of decoding every anchor and thresholding after."""
    from edge_agent.pipeline.detection import batched_nms, decode, to_xyxy

    rng = np.random.default_rng(len(layout) + extras + objectness)
    n, c = 2100, 7
    rows = np.concatenate([rng.uniform(20, 300, (n, 2)), rng.uniform(5, 60, (n, 2)),
                           *([rng.uniform(0, 1, (n, 1))] if objectness else []),
                           rng.uniform(0, 1, (n, c)) ** 60, rng.normal(0, 1, (n, extras))], axis=1).astype(np.float32)
    out = rows.T[None] if layout == "channels-first" else rows[None]
    opts = DetectionOptions.from_manifest({"objectness": objectness, "row_extras": extras, "score_threshold": 0.3})
    cls = rows[:, 5:5 + c] * rows[:, 4:5] if objectness else rows[:, 4:4 + c]
    classes, scores = cls.argmax(axis=1), cls.max(axis=1)
    keep = scores >= 0.3
    assert 10 < keep.sum() < n // 4
    boxes = to_xyxy(rows[keep, :4], "cxcywh")
    order = batched_nms(boxes, scores[keep], classes[keep], 0.45, 100)
    got_boxes, got_scores, got_classes = decode([out], opts, ["y"], c, (320, 320))
    assert np.array_equal(got_boxes, boxes[order]) and np.array_equal(got_scores, scores[keep][order])
    assert got_classes.tolist() == classes[keep][order].tolist()


def test_ssd_anchors_are_read_from_the_manifest_once_not_per_frame():
    """BlazeFace's 896 anchor pairs were turned from the manifest's JSON list into an array on every frame (0.15 ms
    of its 0.4 ms box decode): the options hold them as one float32 array, and decoding with it gives the boxes the
    list gave."""
    from edge_agent.pipeline.detection import decode

    anchors = [[0.25, 0.25], [0.75, 0.5]]
    opts = DetectionOptions.from_manifest({"format": "ssd-anchors", "anchors": anchors, "boxes_output": 0,
                                           "scores_output": 1, "anchor_scale": [64, 64, 64, 64]})
    assert isinstance(opts.anchors, np.ndarray) and opts.anchors.dtype == np.float32 and opts.anchors.shape == (2, 2)
    reg = np.asarray([[[0, 0, 16, 16], [32, 0, 32, 16]]], np.float32)
    logits = np.asarray([[[4.0], [3.0]]], np.float32)
    boxes, scores, _ = decode([reg, logits], opts, ["r", "s"], 1, (64, 64))
    np.testing.assert_allclose(boxes, [[8, 8, 24, 24], [64, 24, 96, 40]], atol=1e-4)  # anchors w = h = 1
    assert scores[0] > scores[1] > 0.9
    with pytest.raises(DetectionConfigError):
        DetectionOptions.from_manifest({"format": "ssd-anchors", "anchors": [[0.1, 0.2], [0.3]]})
