"""Shadow runs on a real agent (in process), a real broker and real camera frames (a video of digits).

A model that passes its self-test and health check but answers differently on this device's inputs is
never switched to; one that agrees is; without live inputs the shadow is skipped and the update switches.
"""

from __future__ import annotations

import pytest

from edge_agent.home import AgentHome
from edge_agent.monitor.agreement import GreedyIoUMatcher, frame_agreement
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
        wait_for(lambda: (fleet.last_reported("cam-1").drift or {}).get("state") == "ok", what="drift state ok")
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
