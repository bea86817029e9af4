"""docs/extending.md's worked examples, kept honest: the profile loads and converts, the runtime runs a
real bundle with the same answers as the built-in one, the sink writes a row per real video frame.
(The pass example has its own test: tests/test_extending_pass.py.)"""

from __future__ import annotations

import csv
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.bundle import Manifest, TrustStore, verify_bundle
from edge_agent.pipeline.runner import Pipeline
from edge_agent.pipeline.sinks import CollectSink, Sink, SinkError
from edge_agent.pipeline.sources import Frame, open_source
from edge_agent.runtimes import get_runtime, load_session, register_runtime
from edge_agent.runtimes.base import ModelSession, Runtime, RuntimeInfo, RuntimeLoadError

from .camera_helpers import digit_frames, write_video
from .conftest import REPO

DOC = (REPO / "docs" / "extending.md").read_text()


def _block(lang: str, starts: str) -> str:
    return next(b for b in re.findall(rf"```{lang}\n(.*?)```", DOC, re.S) if b.lstrip().startswith(starts))


def _define(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(source, "docs/extending.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


NAMES = dict(np=np, ort=ort, Path=Path, Manifest=Manifest, ModelSession=ModelSession, Runtime=Runtime,
             RuntimeInfo=RuntimeInfo, RuntimeLoadError=RuntimeLoadError, Sink=Sink, SinkError=SinkError,
             Frame=Frame, csv=csv, Any=Any)


def test_the_documented_profile_loads_and_converts(tmp_path, digits):
    from converter.cli import main as convert_main
    from device_profiles import load_profile

    path = tmp_path / "orange-pi-5.toml"
    path.write_text(_block("toml", "# Orange Pi 5"))
    profile = load_profile(path)
    assert profile.name == "orange-pi-5" and profile.runtime.formats == ("tflite", "onnx")
    assert tomllib.loads(path.read_text())["limits"]["memory_budget_mb"] == profile.limits.memory_budget_mb
    out = tmp_path / "m.edgebundle"
    assert convert_main(["--quiet", "convert", str(digits.onnx), "--profile", str(path), "--format", "onnx",
                         "--calibration", str(digits.calibration), "--eval", str(digits.evaluation),
                         "--key", str(digits.key), "--out", str(out), "--bench-runs", "5", "--min-speedup", "0"]) == 0
    assert verify_bundle(out, TrustStore.from_paths([digits.pub]), profile="orange-pi-5").manifest.profile == "orange-pi-5"


@pytest.fixture
def unpacked(int8_bundle, digits, tmp_path):
    return verify_bundle(int8_bundle, TrustStore.from_paths([digits.pub]), unpack_to=tmp_path / "unpacked")


def test_the_documented_runtime_runs_a_real_bundle_like_the_builtin_one(unpacked, digits, monkeypatch):
    import edge_agent.runtimes as runtimes

    ns = _define(_block("python", "class MinimalOnnxSession"), dict(NAMES))
    module = type(runtimes)("edgekit_doc_runtime")
    module.__dict__.update(ns)
    monkeypatch.setitem(__import__("sys").modules, "edgekit_doc_runtime", module)
    monkeypatch.setattr(runtimes, "_BACKENDS", dict(runtimes._BACKENDS))
    register_runtime("onnxruntime-minimal", "edgekit_doc_runtime:MinimalOnnxRuntime")
    with pytest.raises(ValueError, match="already registered"):
        register_runtime("onnxruntime-minimal", "elsewhere:Other")

    folder, manifest = unpacked.unpacked_to, unpacked.manifest
    mine = get_runtime("onnxruntime-minimal").load(folder, manifest)
    builtin = load_session(folder, manifest)
    feeds = {manifest.inputs[0].name: digits.x_test[3:4].astype(np.float32)}
    assert np.allclose(mine.run(feeds)[0], builtin.run(feeds)[0], atol=1e-5)
    (folder / manifest.model_file).write_bytes(b"not an onnx model")  # damaged after verification
    with pytest.raises(RuntimeLoadError) as info:
        get_runtime("onnxruntime-minimal").load(folder, manifest)
    assert info.value.exit_code == 40


def test_the_documented_sink_writes_one_row_per_video_frame(unpacked, digits, tmp_path):
    ns = _define(_block("python", "class CsvLatencySink"), dict(NAMES))
    video = write_video(tmp_path / "digits.avi", digit_frames(digits.x_test[:12], 64))
    session = load_session(unpacked.unpacked_to, unpacked.manifest)
    out = tmp_path / "latency.csv"
    collected = CollectSink()
    summary = Pipeline(open_source(str(video)), session, unpacked.manifest, [ns["CsvLatencySink"](out), collected]).run()
    rows = list(csv.DictReader(out.open()))
    assert summary.frames == len(rows) == len(collected.records) == 12
    assert [int(r["label"]) for r in rows] == [r["label"] for r in collected.records]
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    with pytest.raises(SinkError):
        ns["CsvLatencySink"](tmp_path / "no-such-folder" / "x.csv")
