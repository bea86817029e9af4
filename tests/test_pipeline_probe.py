"""Defects a new user of `edge-agent run BUNDLE --source` hit with inputs the other tests had not seen (a real
YOLOv8n bundle, real image files)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from edge_agent.cli import main as agent_main
from converter.cli import main as convert_main

from .camera_helpers import read_video
from .detector_data import photos, yolo_onnx


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """nudenet's YOLOv8n converted at fp32, with its signing key."""
    from types import SimpleNamespace

    from edge_agent.bundle import generate_keypair

    tmp = tmp_path_factory.mktemp("yolo")
    key, pub = generate_keypair(tmp)
    bundle = tmp / "y.edgebundle"
    assert convert_main(["convert", str(yolo_onnx()), "--precision", "fp32", "--profile", "raspberry-pi-4",
                         "--calibration", str(photos(tmp / "photos")), "--key", str(key), "--out", str(bundle),
                         "--bench-runs", "0"]) == 0
    return SimpleNamespace(bundle=bundle, pub=pub, photos=tmp / "photos")


def _run(yolo, *args: str) -> int:
    return agent_main(["run", str(yolo.bundle), "--trust", str(yolo.pub), *args])


def test_annotated_video_of_a_folder_with_images_of_several_sizes_has_every_frame(yolo, tmp_path, capsys):
    """OpenCV's writer silently dropped every frame whose size differed from the first one's: 3 results, 2 frames."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    im = Image.open(yolo.photos / "astronaut.png").convert("RGB")
    im.save(folder / "a.png")
    im.resize((320, 200)).save(folder / "b.png")
    im.save(folder / "c.png")
    video = tmp_path / "out.avi"
    capsys.readouterr()
    assert _run(yolo, "--source", str(folder), "--annotate", str(video)) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    frames = read_video(video)
    assert len(records) == 3 and len(frames) == 3
    assert frames[1].shape == frames[0].shape == (512, 512, 3)


@pytest.mark.parametrize("option", ["--metrics-port", "--preview-port"])
def test_a_port_out_of_range_is_a_usage_error(yolo, tmp_path, option, capsys):
    """A port above 65535 reached bind() after the bundle was verified: `bind(): port must be 0-65535.`, exit 1."""
    with pytest.raises(SystemExit) as exc:
        _run(yolo, "--source", str(yolo.photos), "--output", "none", option, "99999")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{option}: port must be 0-65535, got 99999" in err


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_an_open_timeout_that_never_fires_is_a_usage_error(yolo, seconds, capsys):
    """--open-timeout 0 or below reached OpenCV as "no timeout": a stream that accepted the connection and sent
    nothing hung the run for ever (measured: still waiting after 40 s), against the docs' "a dead camera never
    hangs"."""
    with pytest.raises(SystemExit) as exc:
        _run(yolo, "--source", str(yolo.photos), "--output", "none", "--open-timeout", seconds)
    assert exc.value.code == 2 and "--open-timeout: must be a number of seconds > 0" in capsys.readouterr().err


def test_annotate_into_a_folder_or_an_unknown_suffix_says_why(yolo, tmp_path, capsys):
    """`--annotate DIR` and `--annotate out.txt` ended with `cannot write video DIR` and no reason."""
    folder = tmp_path / "annotated"
    folder.mkdir()
    assert _run(yolo, "--source", str(yolo.photos), "--output", "none", "--annotate", str(folder)) == 73
    assert "it is a folder (give a file: out.mp4 or out.avi)" in capsys.readouterr().err
    assert _run(yolo, "--source", str(yolo.photos), "--output", "none", "--annotate", str(tmp_path / "o.txt")) == 73
    assert "OpenCV has no writer for .txt: use .mp4 or .avi" in capsys.readouterr().err


def test_an_mp4_writer_that_refuses_the_frame_size_does_not_blame_the_suffix(yolo, tmp_path, capsys):
    """A 1x1 first image: mp4v cannot open, and the message said `OpenCV has no writer for .mp4: use .mp4`."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((1, 1, 3), 128, np.uint8))
    assert _run(yolo, "--source", str(folder), "--output", "none", "--annotate", str(tmp_path / "t.mp4")) == 73
    err = capsys.readouterr().err
    assert "OpenCV cannot encode 1x1 frames as .mp4 (try .avi)" in err and "no writer" not in err


def test_port_0_says_which_port_it_took(yolo, tmp_path):
    """`--metrics-port 0` / `--preview-port 0` (the help's "0: any free port") served on a port named only at -v."""
    import re
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", str(yolo.bundle), "--trust", str(yolo.pub),
                           "--source", str(yolo.photos), "--output", "none", "--metrics-port", "0",
                           "--preview-port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proc.stderr)
    preview = re.search(r"MJPEG preview on http://127\.0\.0\.1:(\d+)/", proc.stderr)
    assert metrics and preview and int(metrics.group(1)) > 0 and int(preview.group(1)) > 0, proc.stderr


@pytest.mark.parametrize("psi", ["nan", "-1"])
def test_a_drift_threshold_no_psi_can_be_compared_with_is_a_usage_error(yolo, psi, capsys):
    """--drift-threshold nan gave `drift ok` on Megamind.avi at PSI 8.57 (BlazeFace); -1 gave `drift` always."""
    with pytest.raises(SystemExit) as exc:
        _run(yolo, "--source", str(yolo.photos), "--output", "none", "--drift-threshold", psi)
    assert exc.value.code == 2 and "--drift-threshold: must be a PSI >= 0" in capsys.readouterr().err


def test_sigterm_while_a_stream_opens_removes_the_unpacked_bundle(yolo, tmp_path):
    """SIGTERM before the pipeline ran (here: a stream that accepts and sends nothing) killed the process (-15),
    leaving the unpacked bundle (12 MB) in TMPDIR/edgekit-run-*; it now unwinds like Ctrl-C: exit 130, folder gone."""
    import os
    import socket

    from .fault_helpers import sigterm_once

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/video.mjpg"
        returncode, err = sigterm_once(["-m", "edge_agent.cli", "run", str(yolo.bundle), "--trust", str(yolo.pub),
                                        "--source", url, "--open-timeout", "4", "--output", "none"],
                                       {**os.environ, "TMPDIR": str(tmp)}, "edgekit-run-*/bundle/*", tmp, timeout=60)
    assert returncode == 130, err
    assert not list(tmp.glob("edgekit-run-*"))


@pytest.mark.parametrize("option", ["--output", "--annotate"])
def test_writing_over_the_source_video_is_refused(yolo, tmp_path, option, capsys):
    """`--output clip.avi` (or --annotate) on `--source clip.avi` truncated the video: 2 of 68 frames, exit 0."""
    import shutil

    video = tmp_path / "clip.avi"
    shutil.copy("/usr/share/doc/opencv-doc/examples/data/tree.avi", video)
    size = video.stat().st_size
    extra = ["--output", "none"] if option == "--annotate" else []
    assert _run(yolo, "--source", str(video), *extra, option, str(video)) == 2
    assert "is a file of the source: it would be overwritten" in capsys.readouterr().err
    assert video.stat().st_size == size


def test_camera_options_without_source_are_refused_not_ignored(yolo, tmp_path, capsys):
    """`run BUNDLE photo.png --annotate out.avi` classified the photo, exit 0, and wrote no video."""
    plain = ["run", str(yolo.bundle), str(yolo.photos / "astronaut.png"), "--trust", str(yolo.pub)]
    assert agent_main([*plain, "--annotate", str(tmp_path / "out.avi")]) == 2
    assert "--annotate only works with --source (e.g. --source" in capsys.readouterr().err
    assert not (tmp_path / "out.avi").exists()
    assert agent_main([*plain, "--json"]) == 0  # plain runs as before


def test_input_files_after_an_option_are_inputs(yolo, capsys):
    """`run BUNDLE --trust PUB photo.png` ended with `unrecognized arguments: photo.png` (exit 2)."""
    photo = yolo.photos / "astronaut.png"
    capsys.readouterr()
    assert agent_main(["run", str(yolo.bundle), "--trust", str(yolo.pub), str(photo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detections"][0]["name"] == "FACE_FEMALE"
    with pytest.raises(SystemExit) as exc:  # an unknown option is still refused
        agent_main(["run", str(yolo.bundle), "--trust", str(yolo.pub), str(photo), "--no-such-option"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unrecognized arguments:" in err and "--no-such-option" in err
