"""The fleet's side of shadow runs and drift, as pure functions: a device's shadow report is a failed
device for the stage gate and is kept with its target; per-stage figures; the status and rollout text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_fleet.cli.render import drift_text, rollout_text
from edge_fleet.registry.records import TargetStatus as T
from edge_fleet.rollout.desired import shadow_gate
from edge_fleet.rollout.observe import decide, observe_sent
from edge_fleet.rollout.states import RolloutEvent, TargetEvent
from edge_fleet.views import rollout_view, stage_shadow

from .test_fleet_rollout_states import V1, V2, device, rollout, target

FAILED = {"verdict": "failed", "deployment_id": "r-1", "agreement": 0.12, "frames": 8, "min_agreement": 0.9,
          "active_p50_ms": 0.3, "candidate_p50_ms": 0.2}
PASSED = {**FAILED, "verdict": "passed", "agreement": 1.0, "frames": 300}


def test_a_failed_shadow_run_is_a_failed_device_and_halts_the_first_stage():
    r, t = rollout(target("a", T.SENT, sent_at=100.0), target("b", T.WAITING, stage=1)), None
    t = r.targets[0]
    seen = observe_sent(r, t, device("a", V1, "failed", last_error="shadowing: shadow failed: ...", shadow=FAILED), 101)
    assert (seen.event, seen.shadow) == (TargetEvent.REPORTED_FAILURE, FAILED)
    halted = rollout(target("a", T.FAILED, shadow=FAILED), target("b", T.WAITING, stage=1))
    assert decide(halted, 102).event == RolloutEvent.HALTED  # max_failures 0: stage 2 never starts
    # a shadow report of another deployment is not this rollout's
    other = observe_sent(r, t, device("a", V2, "succeeded", shadow={**PASSED, "deployment_id": "r-0"}), 101)
    assert other.event == TargetEvent.REPORTED_SUCCESS and other.shadow is None


def test_stage_figures_and_the_rollout_text():
    r = rollout(target("a", T.FAILED, shadow=FAILED), target("c", T.SUCCEEDED, shadow=PASSED),
                target("b", T.NOT_STARTED, stage=1))
    s = stage_shadow(list(r.targets[:2]))
    assert s["verdicts"] == {"failed": 1, "passed": 1} and s["frames"] == 308
    assert (s["agreement_min"], s["agreement_mean"]) == (0.12, 0.56)
    assert stage_shadow([r.targets[2]]) is None
    text = rollout_text(rollout_view(r))
    assert "stage 1 shadow: 1 failed, 1 passed; agreement min 0.120 mean 0.560 (minimum 0.9) over 308 frames" in text


def test_drift_text_in_status():
    assert drift_text(None) == "-"
    assert drift_text({"state": "warming_up", "frames": 40, "window": 200}) == "warming_up 40/200"
    assert drift_text({"state": "drift", "worst": "input.brightness", "psi": 1.93}) == "drift (input.brightness PSI 1.93)"
    # the model the state belongs to: after an OTA switch the column must not pass the old model's state as the new's
    assert drift_text({"state": "ok", "worst": "input.contrast", "psi": 0.04, "model": "digits:3"}) == \
        "ok (input.contrast PSI 0.04) of digits:3"
    assert drift_text({"state": "warming_up", "frames": 0, "window": 200, "model": "digits:4"}) == \
        "warming_up 0/200 of digits:4"
    assert drift_text({"state": "no_reference", "model": "digits:1"}) == "no_reference of digits:1"


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), st.integers(-5, 100000),
       st.floats(allow_nan=True, allow_infinity=True))
def test_shadow_gate_accepts_exactly_the_valid_settings(min_agreement, frames, timeout):
    """Found that a NaN --shadow-timeout used to pass (NaN <= 0 is false) and reach the devices."""
    from edge_fleet.errors import FleetError

    valid = min_agreement is None or (0 <= min_agreement <= 1 and frames >= 1 and 0 < timeout < float("inf"))
    try:
        gate = shadow_gate(min_agreement, frames, timeout)
    except FleetError:
        assert not valid
    else:
        assert valid and (gate is None) == (min_agreement is None)


def test_a_desired_shadow_gate_with_nan_or_out_of_range_values_is_refused():
    import json

    import pytest

    from edge_agent.ota.protocol import ProtocolError, ShadowGate

    assert ShadowGate.from_obj(json.loads('{"min_agreement": 0.9}')) == ShadowGate(0.9, 300, 300.0, 1)
    for bad in ('{"min_agreement": NaN}', '{"min_agreement": 0.9, "timeout_s": NaN}', '{"min_agreement": 1.5}',
                '{"min_agreement": 0.9, "frames": 0}', '{"min_agreement": 0.9, "every": true}', '[]'):
        with pytest.raises(ProtocolError):
            ShadowGate.from_obj(json.loads(bad))


def test_deploy_refuses_a_shadow_timeout_not_shorter_than_the_stage_timeout(tmp_path, capsys):
    from edge_fleet.cli import main as fleet_main

    rc = fleet_main(["deploy", "digits:3", "--devices", "cam-a", "--min-shadow-agreement", "0.9", "--shadow-timeout",
                     "900", "--db", str(tmp_path / "fleet.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "--shadow-timeout (900s) must be shorter than --stage-timeout (900s)" in err, err


def test_status_shows_the_shadow_figures_of_each_stage():
    """`edge-fleet status` (not only `rollouts ID`): per stage of the active and newest rollouts."""
    from edge_fleet.cli.render import status_text
    from edge_fleet.views import rollout_shadows, rollout_summary

    halted = rollout(target("a", T.FAILED, shadow=FAILED), target("b", T.NOT_STARTED, stage=1))
    plain = rollout(target("a", T.SUCCEEDED))
    shadows = rollout_shadows([rollout_summary(halted), rollout_summary(plain), rollout_summary(halted)])
    assert [(r["id"], [s["stage"] for s in r["stages"]]) for r in shadows] == [(halted.id, [1])]
    text = status_text([], [], shadows)
    assert f"rollout {halted.id} digits:2" in text and "stage 1 shadow: 1 failed; agreement min 0.120" in text, text


def test_a_device_reporting_nan_figures_neither_hides_the_lowest_agreement_nor_breaks_the_views():
    """A reported shadow is any JSON object and json.loads takes NaN: the stage's lowest agreement came out as
    another device's 0.9 (NaN unsorted the list), and a NaN frame count raised in int() for every view. The
    stage's minimum was the first device's word for it (any text, line breaks too), not the rollout's gate."""
    import dataclasses
    import json

    from edge_agent.ota.protocol import ReportedState
    from edge_fleet.views import dumps

    payload = (b'{"device_id": "x", "phase": "failed", "profile": "p", "agent_version": "0", "updated_at": 1.0,'
               b' "shadow": {"verdict": "failed", "agreement": NaN, "frames": NaN, "active_p50_ms": Infinity,'
               b' "min_agreement": "0.1\\nstage 2 shadow: 3 passed"}}')
    odd = ReportedState.parse(payload).shadow
    r = dataclasses.replace(rollout(target("b", T.FAILED, shadow=odd), target("c", T.FAILED, shadow=FAILED),
                                    target("a", T.SUCCEEDED, shadow={**PASSED, "agreement": 0.9})),
                            shadow={"min_agreement": 0.9, "frames": 300, "timeout_s": 300.0})  # the rollout's gate
    view = rollout_view(r)
    s = view["stage_progress"][0]["shadow"]
    assert (s["agreement_min"], s["agreement_mean"], s["frames"], s["min_agreement"]) == (0.12, 0.51, 308, 0.9)
    assert s["active_p50_ms"] == 0.3
    assert "agreement min 0.120 mean 0.510 (minimum 0.9)" in rollout_text(view)
    json.loads(dumps(view), parse_constant=lambda c: pytest.fail(f"{c} in --json"))
