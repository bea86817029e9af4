"""Shadow runs on a real agent (in process), a real broker and real camera frames (a video of digits).

A model that passes its self-test and health check but answers differently on this device's inputs is
never switched to; one that agrees is; without live inputs the shadow is skipped and the update switches.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.home import AgentHome
from edge_agent.monitor.agreement import GreedyIoUMatcher, frame_agreement
from edge_agent.monitor.shadow import ShadowReport, ShadowRun
from edge_agent.ota.protocol import ShadowGate
from edge_agent.ota.slots import Health, Slots

from .monitor_fixtures import digits_video, white_digits_bundle  # noqa: F401 - fixtures
from .ota_fixtures import agent_in_process, broker, bundles, fleet, home, status, v1_home  # noqa: F401 - fixtures
from .ota_helpers import wait_for

GATE = ShadowGate(min_agreement=0.9, frames=60, timeout_s=60.0)


def test_a_model_that_disagrees_in_shadow_is_never_switched_to(home, digits, broker, fleet, white_digits_bundle,
                                                               digits_video, bundles, capsys):
    agent, thread = agent_in_process(home, broker.url, "cam-1", digits.pub, source=str(digits_video), probation_s=0,
                                     drift_window=100)
    try:
        wait_for(lambda: fleet.last_reported("cam-1"), what="the agent to report")
        fleet.deploy("cam-1", white_digits_bundle, "dep-white", shadow=GATE)
        r = fleet.wait_phase("cam-1", "dep-white")
        assert r.phase == "failed", r
        s = r.shadow
        assert s["verdict"] == "failed" and s["deployment_id"] == "dep-white", s
        assert s["agreement"] < 0.9 and 1 <= s["frames"] <= 60 and s["offered"] >= s["frames"]
        assert s["active_p50_ms"] > 0 and s["candidate_p50_ms"] > 0
        assert r.last_error.startswith("shadowing: shadow failed: agreement"), r.last_error
        assert r.current.version == 1
        # it passed its self-test and health check: the slot was marked good, then bad by the failed shadow
        slots = Slots(AgentHome(home).slots_dir)
        assert slots.active_name() == "a" and slots.info("b").health is Health.BAD
        assert "shadow failed" in (slots.info("b").reason or "")
        with fleet.lock:
            seen = [x for x in fleet.reported["cam-1"]]
        assert "shadowing" in {x.phase for x in seen} and "health_check" in {x.phase for x in seen}
        assert all(x.current is None or x.current.version == 1 for x in seen), "v3 was never active"
        assert agent.loop.current.ref.version == 1
        s = status(home, capsys)  # `edge-agent status --json`: the job, its error and the shadow figures
        assert (s["version"], s["phase"], s["shadow"]["verdict"]) == (1, "failed", "failed")

        # the same model as v1 (v2: its weights re-signed) agrees on every frame: switched to
        fleet.deploy("cam-1", bundles["v2"], "dep-v2", shadow=GATE)
        r = fleet.wait_phase("cam-1", "dep-v2")
        assert r.phase == "succeeded" and r.current.version == 2, r
        assert r.shadow["verdict"] == "passed" and r.shadow["agreement"] == 1.0 and r.shadow["frames"] == 60
        # drift of the live frames against v2's reference: held-out digits, no drift
        drift_seen: list = []

        def drift_ok() -> bool:
            drift_seen.append(fleet.last_reported("cam-1").drift)
            return (drift_seen[-1] or {}).get("state") == "ok"

        try:
            wait_for(drift_ok, what="drift state ok")
        except AssertionError as exc:
            tel = fleet.last_telemetry("cam-1")
            raise AssertionError(f"{exc}; last reported drift {drift_seen[-1]}; telemetry drift "
                                 f"{tel.extra.get('drift') if tel else None}") from None
        # telemetry carries every feature's PSI and the live channel means beside the reported state
        tel = wait_for(lambda: (t := fleet.last_telemetry("cam-1")) and t.extra.get("drift", {}).get("state") == "ok"
                       and t, what="drift in telemetry")
        assert set(tel.extra["drift"]["psi"]) >= {"input.brightness", "input.contrast", "output.class"}
        assert all(v < 0.25 for v in tel.extra["drift"]["psi"].values()) and tel.extra["drift"]["model"] == "digits:2"
    finally:
        agent.stop()
        thread.join(20)


def test_without_live_inputs_the_shadow_is_skipped_and_the_update_switches(home, digits, broker, fleet, bundles):
    """The documented choice: no live frames (no --source) -> switch, reported as shadow skipped."""
    agent, thread = agent_in_process(home, broker.url, "nocam-1", digits.pub, probation_s=0)
    try:
        wait_for(lambda: fleet.last_reported("nocam-1"), what="the agent to report")
        fleet.deploy("nocam-1", bundles["v2"], "dep-skip", shadow=GATE)
        r = fleet.wait_phase("nocam-1", "dep-skip")
        assert r.phase == "succeeded" and r.current.version == 2
        assert r.shadow["verdict"] == "skipped" and "no live inputs" in r.shadow["reason"]
    finally:
        agent.stop()
        thread.join(20)


@pytest.mark.parametrize("a, b, expected", [
    ([], [], 1.0),
    ([{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}], [], 0.0),
    ([{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}], [{"box": [1, 1, 10, 10], "label": 1, "score": 0.8}], 1.0),
    ([{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}], [{"box": [1, 1, 10, 10], "label": 2, "score": 0.8}], 0.0),
    ([{"box": [0, 0, 10, 10], "label": 1, "score": 0.9}, {"box": [20, 20, 30, 30], "label": 1, "score": 0.5}],
     [{"box": [20, 20, 30, 31], "label": 1, "score": 0.9}], 0.5),
])
def test_detector_agreement_is_matched_boxes_over_the_larger_set(a, b, expected):
    agree = frame_agreement("detection", GreedyIoUMatcher(), iou=0.5)
    assert agree({"detections": a}, {"detections": b}) == pytest.approx(expected)
    assert frame_agreement("classification")({"label": 3}, {"label": 3}) == 1.0


# --- the shadow run itself, on detectors: real ONNX Runtime sessions of constructed YOLO-style detectors ---

def _yolo(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows + [[0, 0, 0, 0, 0, 0]] * 5, np.float32).T[None]  # (1, 4+2, N=8): attributes on the smaller axis


# On a 200x100 frame: a person at [50, 25, 150, 75], a car on the same spot, a small person at [12.5, 12.5, 37.5, 37.5].
ACTIVE_64 = [[32, 32, 32, 16, 0.9, 0.05], [32, 32, 32, 16, 0.1, 0.7], [8, 24, 8, 8, 0.6, 0.0]]  # letterbox 64x64
SAME_96 = [[48, 48, 48, 24, 0.9, 0.05], [48, 48, 48, 24, 0.1, 0.7], [12, 36, 12, 12, 0.6, 0.0]]  # letterbox 96x96
MOVED_96 = [[48, 48, 48, 24, 0.9, 0.05], [48, 48, 48, 24, 0.1, 0.7], [80, 60, 12, 12, 0.6, 0.0]]  # small person elsewhere


def _live(bundle, pub, tmp):
    from edge_agent.bundle import TrustStore, verify_bundle
    from edge_agent.pipeline.stages import Postprocessor, Preprocessor
    from edge_agent.runtimes import load_session

    vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=tmp / f"u-{bundle.parent.name}")
    return vb.manifest, load_session(vb.unpacked_to, vb.manifest, threads=1), Preprocessor(vb.manifest), \
        Postprocessor(vb.manifest)


def _shadow(run: ShadowRun, samples: list) -> ShadowReport:
    """Offer the active model's answered frames, again and again, until the run decides."""
    out: list[ShadowReport] = []
    t = threading.Thread(target=lambda: out.append(run.run()))
    t.start()
    i = 0
    while t.is_alive():
        run.observe(samples[i % len(samples)])
        i += 1
        time.sleep(0.002)
    return out[0]


def test_detector_shadow_matches_boxes_in_frame_pixels_across_input_sizes(tmp_path):
    from edge_agent.bundle import generate_keypair
    from edge_agent.pipeline.observe import LiveSample
    from edge_agent.pipeline.stages import FrameInput
    from edge_agent.pipeline.sources import Frame

    from .camera_helpers import detector_bundle

    key, pub = generate_keypair(tmp_path / "keys")
    made = {}
    for name, rows, size in (("active", ACTIVE_64, 64), ("same", SAME_96, 96), ("moved", MOVED_96, 96)):
        (tmp_path / name).mkdir()
        made[name] = _live(detector_bundle(tmp_path / name, key, {"output0": _yolo(rows)}, {"format": "yolo"},
                                           size=size), pub, tmp_path)
    rng = np.random.default_rng(0)
    manifest, session, pre, post = made["active"]
    samples = []
    for i in range(4):
        prepared = pre(Frame(i, rng.integers(0, 255, (100, 200, 3), dtype=np.uint8), time.monotonic()))
        outputs = session.run(prepared.feeds)
        samples.append(LiveSample(FrameInput(prepared.frame), None, prepared.feeds, outputs, 0.5,
                                  post(outputs, prepared.geometry)))
    assert len(samples[0].result["detections"]) == 3

    gate = ShadowGate(min_agreement=0.9, frames=12, timeout_s=60.0)
    same = _shadow(ShadowRun(made["same"][1], made["same"][0], gate), samples)
    assert (same.verdict, same.agreement, same.frames) == ("passed", 1.0, 12), same
    moved = _shadow(ShadowRun(made["moved"][1], made["moved"][0], gate), samples)
    assert moved.verdict == "failed" and moved.agreement == pytest.approx(2 / 3, abs=1e-3), moved
    assert moved.frames < 12 and "stopped early" in moved.reason  # 2 of 3 boxes per frame: out of reach at once


def test_shadow_samples_less_often_while_the_active_model_is_over_its_latency_budget():
    """The active model's latency (as the live feed measured it) over the budget doubles the sampling interval."""
    from types import SimpleNamespace

    from edge_agent.bundle import Manifest, Postprocess, Preprocess, TensorSpec

    manifest = Manifest(name="m", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime",
                        precision="fp32", model_file="model/model.onnx",
                        inputs=[TensorSpec("image", "float32", [1, 1, 8, 8], "NCHW")], outputs=[],
                        preprocess=Preprocess(kind="image", color="GRAY", size=[8, 8]),
                        postprocess=Postprocess(kind="classification"))
    run = ShadowRun(session=None, manifest=manifest, gate=ShadowGate(0.9, frames=300), latency_budget_ms=2.0)
    slow = SimpleNamespace(latency_ms=5.0, frame=None, result={})
    fast = SimpleNamespace(latency_ms=1.0, frame=None, result={})
    for _ in range(20):
        run.observe(fast)
    assert run.every == 1
    for _ in range(60):
        run.observe(slow)
    assert run.every >= 2


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 8), st.integers(0, 8))
def test_the_shadow_run_and_the_converters_gate_count_matched_boxes_alike(seed, n_a, n_b):
    """One matcher (edge_agent.pipeline.detection.matched_boxes): a box pair the converter's gate counts as
    agreeing is one the shadow run counts too, on overlapping boxes of a few classes."""
    from converter.accuracy.detection import match

    rng = np.random.default_rng(seed)

    def boxes(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xy = rng.uniform(0, 40, (n, 2))
        return np.hstack([xy, xy + rng.uniform(5, 30, (n, 2))]), rng.uniform(0, 1, n), rng.integers(0, 2, n)

    a, b = boxes(n_a), boxes(n_b)
    as_results = [[{"box": list(map(float, bx)), "score": float(s), "label": int(c)} for bx, s, c in zip(*d)] for d in (a, b)]
    n = GreedyIoUMatcher().matches(as_results[0], as_results[1], 0.5)
    assert n == match(b, a) <= min(n_a, n_b)  # the gate's match(ref, cand) walks the candidate's boxes by score


def _tiny(folder, nodes: list, shape: list, out_shape: list, kind: str, inits: tuple = (),
          labels: list[str] | None = None) -> tuple:
    """A real ONNX Runtime session of a one-input graph `x` -> `y` (no preprocessing) and its manifest."""
    import onnx
    from onnx import TensorProto, helper

    from edge_agent.bundle import Manifest, Postprocess, Preprocess, TensorSpec
    from edge_agent.runtimes import load_session

    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (folder / "model").mkdir(parents=True)
    onnx.save(model, str(folder / "model" / "model.onnx"))
    dims = lambda s: [d if isinstance(d, int) else -1 for d in s]  # noqa: E731 - a named dim: any size
    manifest = Manifest(name="tiny", version=1, profile="raspberry-pi-4", format="onnx", runtime="onnxruntime",
                        precision="fp32", model_file="model/model.onnx", inputs=[TensorSpec("x", "float32", dims(shape))],
                        outputs=[TensorSpec("y", "float32", dims(out_shape))], preprocess=Preprocess(kind="none"),
                        postprocess=Postprocess(kind=kind), labels=labels)
    return manifest, load_session(folder, manifest, threads=1)


def _doubler(folder, shape: list) -> tuple:
    """y = 2x, postprocess none: nothing to compare but errors."""
    from onnx import helper

    return _tiny(folder, [helper.make_node("Add", ["x", "x"], ["y"])], shape, shape, "none")


def _shadow_one_by_one(run: ShadowRun, active: tuple, inputs: list[np.ndarray]) -> ShadowReport:
    """Offer each input (answered by the `active` (manifest, session)) once the worker compared the last one."""
    from types import SimpleNamespace

    from edge_agent.pipeline.observe import LiveSample
    from edge_agent.pipeline.stages import Postprocessor
    from edge_agent.serving.tensors import TensorInput

    manifest, session = active
    served, post = SimpleNamespace(manifest=manifest, generation=1, bundle_dir=None), Postprocessor(manifest)
    out: list[ShadowReport] = []
    t = threading.Thread(target=lambda: out.append(run.run()))
    t.start()
    for i, x in enumerate(inputs):
        outputs = session.run({"x": x})
        wait_for(lambda: run.frames == i or not t.is_alive(), 60, "the shadow worker to take the last input")
        run.observe(LiveSample(TensorInput({"x": x}), served, {"x": x}, outputs, 0.1, post(outputs, None)))
    t.join(120)
    return out[0]


def test_a_model_without_comparable_outputs_is_judged_on_its_share_of_errors(tmp_path):
    """Postprocess `none` (maps, embeddings): only the new model's errors disagree. Its one failed request in 60
    (an app's 5-value tensor, which the new model's fixed input refuses) made agreement 0.0 and failed the update:
    the agreement counted the errors alone."""
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, 5 if i == 10 else 4), dtype=np.float32) for i in range(60)]
    new_manifest, new = _doubler(tmp_path / "new", [1, 4])
    run = ShadowRun(new, new_manifest, ShadowGate(min_agreement=0.9, frames=60, timeout_s=120.0))
    report = _shadow_one_by_one(run, _doubler(tmp_path / "active", [1, "n"]), inputs)
    assert (report.verdict, report.frames, run.errors) == ("passed", 60, 1), report
    assert report.agreement == pytest.approx(59 / 60, abs=1e-4) and "errors (1)" in report.reason


def test_classes_are_compared_by_name_when_both_models_have_labels(tmp_path):
    """A retrained classifier that added a class ('bird' first) numbers cat and dog 1 and 2, not 0 and 1: its
    shadow run compared indices and failed on every frame although it named every input as the old model did."""
    from onnx import helper, numpy_helper

    weights = np.asarray([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)  # cat, dog, fish: the largest x

    def classifier(folder, w: np.ndarray, labels: list[str]) -> tuple:
        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
        return _tiny(folder, [node], [1, 4], [1, len(w)], "classification", (numpy_helper.from_array(w, "w"),), labels)

    rng = np.random.default_rng(1)
    inputs = [rng.random((1, 4), dtype=np.float32) for _ in range(40)]
    retrained = np.vstack([np.full((1, 4), -9.0, np.float32), weights])  # bird never wins on these inputs
    new_manifest, new = classifier(tmp_path / "new", retrained, ["bird", "cat", "dog", "fish"])
    run = ShadowRun(new, new_manifest, ShadowGate(min_agreement=0.9, frames=40, timeout_s=120.0))
    report = _shadow_one_by_one(run, classifier(tmp_path / "active", weights, ["cat", "dog", "fish"]), inputs)
    assert (report.verdict, report.agreement, report.frames) == ("passed", 1.0, 40), report
    swapped_manifest, swapped = classifier(tmp_path / "swapped", weights, ["dog", "cat", "fish"])
    run = ShadowRun(swapped, swapped_manifest, ShadowGate(min_agreement=0.9, frames=40, timeout_s=120.0))
    report = _shadow_one_by_one(run, classifier(tmp_path / "active2", weights, ["cat", "dog", "fish"]), inputs)
    assert report.verdict == "failed", report  # same indices, other names: cats called dogs
    box = {"box": [0, 0, 10, 10], "score": 0.9}
    renumbered = ({"detections": [{**box, "label": 0, "name": "cat"}]}, {"detections": [{**box, "label": 1, "name": "cat"}]})
    assert frame_agreement("detection", by_name=True)(*renumbered) == 1.0
