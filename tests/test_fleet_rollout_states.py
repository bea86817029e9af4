"""The rollout's transition tables and its pure decisions, without a broker.

The tables are data, so their shape is checked here (every status reachable, final statuses
final); the decisions (observe.py) are checked on hand-made records; and RolloutDriver runs
against a real SQLite registry with a publish function that records what it would send.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ota.protocol import BundleRef, ReportedState, Topics
from edge_fleet.errors import FleetError, NoTargets
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import (BundleRecord, DeviceRecord, RolloutRecord, RolloutStatus, RolloutTarget,
                                         TargetStatus)
from edge_fleet.rollout import RolloutDriver, plan_rollout
from edge_fleet.rollout.observe import decide, halt_outcome, observe_rolling_back, observe_sent, observe_succeeded
from edge_fleet.rollout.states import (ACTION_FROM, ROLLOUT_TRANSITIONS, TARGET_TRANSITIONS, IllegalTransition, RolloutEvent,
                                       TargetEvent, next_target_status)

T, R, E = TargetStatus, RolloutStatus, TargetEvent
V1, V2 = "1" * 64, "2" * 64


def reachable(start: set, table: dict) -> set:
    seen, frontier = set(start), set(start)
    while frontier:
        frontier = {nxt for (src, _e), nxt in table.items() if src in frontier} - seen
        seen |= frontier
    return seen


def test_every_target_status_is_reachable_and_final_ones_have_no_way_out():
    assert reachable({T.WAITING, T.SKIPPED}, TARGET_TRANSITIONS) == set(TargetStatus)
    final = {T.SKIPPED, T.NOT_STARTED, T.CANCELLED, T.ROLLED_BACK, T.ROLLBACK_FAILED, T.ROLLBACK_TIMEOUT}
    assert not [k for k in TARGET_TRANSITIONS if k[0] in final]
    # failed and timed-out devices only gain a note (on halt); they never turn into anything else
    assert {v for (s, _e), v in TARGET_TRANSITIONS.items() if s in (T.FAILED, T.TIMEOUT)} <= {T.FAILED, T.TIMEOUT}
    assert {e for _s, e in TARGET_TRANSITIONS} == set(TargetEvent)


def test_every_rollout_status_is_reachable_and_ends_in_halted_or_succeeded():
    assert reachable({R.PENDING}, ROLLOUT_TRANSITIONS) == set(RolloutStatus)
    assert not [k for k in ROLLOUT_TRANSITIONS if k[0] == R.HALTED]
    # a succeeded rollout only leaves by an operator's roll-back, which halts it
    assert {v for (s, _e), v in ROLLOUT_TRANSITIONS.items() if s == R.SUCCEEDED} == {R.HALTING, R.HALTED}
    assert {e for _s, e in ROLLOUT_TRANSITIONS} == set(RolloutEvent)
    # every operator action is possible from somewhere, and only from statuses the table can leave
    for action, sources in ACTION_FROM.items():
        assert sources and all(s != R.HALTED for s in sources), action


def test_a_pair_missing_from_the_table_is_refused():
    assert next_target_status(T.SENT, E.REPORTED_SUCCESS) == T.SUCCEEDED
    with pytest.raises(IllegalTransition, match="no transition from rolled_back on sent"):
        next_target_status(T.ROLLED_BACK, E.SENT)


def rollout(*targets: RolloutTarget, stage: int = 0, stages: tuple[int, ...] = (1, 2), max_failures: float = 0,
            soak: float = 0.0, status: RolloutStatus = R.RUNNING) -> RolloutRecord:
    return RolloutRecord("r-1", "digits", 2, status, stages, stage, 0.0, max_failures, 30.0, None, 0.0, 100.0, None,
                         soak, targets)


def target(dev: str, status: TargetStatus, stage: int = 0, **kw) -> RolloutTarget:
    return RolloutTarget("r-1", dev, stage, kw.pop("bundle_sha", V2), kw.pop("previous_sha", V1), status, **kw)


def device(dev: str, sha: str | None, phase: str | None, deployment: str | None = "r-1", **kw) -> DeviceRecord:
    return DeviceRecord(dev, profile="pi", current=BundleRef("digits", 1, sha) if sha else None, phase=phase,
                        deployment_id=deployment, **kw)


def test_observe_sent_success_failure_timeout_and_nothing_yet():
    r, t = rollout(), target("a", T.SENT, sent_at=100.0)
    assert observe_sent(r, t, device("a", V2, "succeeded"), 101).event == E.REPORTED_SUCCESS
    seen = observe_sent(r, t, device("a", V1, "failed", last_error="self-test differs"), 101)
    assert (seen.event, seen.reason) == (E.REPORTED_FAILURE, "self-test differs")
    assert observe_sent(r, t, device("a", V1, "failed", deployment="r-0"), 101) is None  # an older deployment
    seen = observe_sent(r, t, device("a", V1, "downloading"), 131)
    assert seen.event == E.TIMED_OUT and seen.reason == "no success within 30s (last phase: downloading)"
    assert observe_sent(r, t, DeviceRecord("a"), 129) is None


def test_observe_succeeded_notices_an_undo_and_rolling_back_its_outcomes():
    r = rollout()
    assert observe_succeeded(r, device("a", V2, "succeeded")) is None
    seen = observe_succeeded(r, device("a", V1, "rolled_back", last_error="inferences failed"))
    assert seen.event == E.UNDONE and "inferences failed" in seen.reason
    t = target("a", T.ROLLING_BACK, reason="desired reset to previous digits:1")
    assert observe_rolling_back(r, t, device("a", V1, "rolled_back"), 101).event == E.ROLLBACK_CONFIRMED
    assert observe_rolling_back(r, t, device("a", V2, "failed", "r-1-rollback"), 101).event == E.ROLLBACK_REPORTED_FAILURE
    late = observe_rolling_back(r, t, device("a", V2, "idle", presence="offline"), 131)
    assert late.event == E.TIMED_OUT and "presence: offline" in late.reason
    assert observe_rolling_back(r, t, device("a", V2, "idle"), 129) is None


@pytest.mark.parametrize(("status", "previous", "sent", "event"), [
    (T.SUCCEEDED, V1, True, E.HALT_REVERT_SENT),
    (T.SUCCEEDED, None, True, E.HALT_REVERT_DONE),
    (T.SUCCEEDED, V1, False, E.HALT_REVERT_IMPOSSIBLE),
    (T.SENT, V1, True, E.HALT_CANCELLED),
    (T.FAILED, V1, True, E.HALT_NOTED),
])
def test_halt_outcome(status, previous, sent, event):
    t = target("a", status, previous_sha=previous, reason="was")
    seen = halt_outcome(t, "note", sent)
    assert seen.event == event and next_target_status(status, seen.event)
    assert seen.reason == ("was; note" if event == E.HALT_NOTED else "note")


def test_decide_halts_waits_soaks_moves_on_and_completes():
    ok = target("a", T.SUCCEEDED, done_at=100.0)
    assert decide(rollout(ok, target("b", T.WAITING, stage=1)), 101) == decide(rollout(ok), 101)  # stage 0 done
    assert decide(rollout(ok, target("b", T.WAITING, stage=1)), 101).event == RolloutEvent.NEXT_STAGE
    assert decide(rollout(target("a", T.SENT)), 101) is None
    assert decide(rollout(ok, soak=5.0), 104) is None and decide(rollout(ok, soak=5.0), 105).event
    halted = decide(rollout(ok, target("b", T.FAILED)), 101)
    assert halted.event == RolloutEvent.HALTED and halted.reason == "1 device(s) failed, more than the allowed 0"
    done = decide(rollout(ok, target("b", T.TIMEOUT, stage=1), stage=1, max_failures=1), 101)
    assert done.event == RolloutEvent.COMPLETED and done.reason == "1/2 devices on digits:2, 1 failed"


@given(st.lists(st.sampled_from([T.SUCCEEDED, T.FAILED, T.TIMEOUT, T.SENT, T.CANCELLED]), min_size=1, max_size=12),
       st.integers(0, 3))
def test_decide_halts_exactly_when_failures_exceed_the_threshold(statuses, allowed):
    r = rollout(*(target(f"d{i}", s, done_at=0.0) for i, s in enumerate(statuses)), stages=(len(statuses),),
                max_failures=float(allowed))
    failures = sum(s in (T.FAILED, T.TIMEOUT) for s in statuses)
    d = decide(r, 1.0)
    assert (d is not None and d.event == RolloutEvent.HALTED) == (failures > allowed)
    if failures <= allowed:  # one stage: it completes exactly when nobody is still in flight
        assert (d is not None and d.event == RolloutEvent.COMPLETED) == (T.SENT not in statuses)


def _bundle(tmp: Path, sha: str, version: int) -> BundleRecord:
    """A registry record with a 10-byte stored file (the driver hashes its blocks for the desired state)."""
    path = tmp / f"{sha}.edgebundle"
    path.write_bytes(bytes(10))
    return BundleRecord(sha, "digits", version, "pi", 10, {}, {"key_id": "k"}, "k", path, 0.0)


def _two_devices_on_v1(reg, tmp: Path) -> None:
    """digits v1 and v2 published for profile pi; devices a and b report v1."""
    for sha, v in ((V1, 1), (V2, 2)):
        reg.add_bundle(_bundle(tmp, sha, v))
    for dev in ("a", "b"):
        reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, V1)))


def _recording_driver(reg, sent: list) -> RolloutDriver:
    """A driver whose publish() records (topic, decoded payload) instead of going to a broker."""
    return RolloutDriver(reg, Topics(), lambda topic, payload, _retain: sent.append(
        (topic, json.loads(payload) if payload else None)))


def test_driver_on_a_real_registry_sends_stages_and_halts_back(registry_location, tmp_path):
    """Two devices in two stages; the first fails, so the second never gets the bundle and the first
    gets v1 back. publish() records what would go to the broker."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100])
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        assert [(t, p["bundle"]["version"]) for t, p in sent] == [("edgekit/devices/a/desired", 2)]
        reg.record_reported(ReportedState("a", "failed", "pi", "t", current=BundleRef("digits", 1, V1),
                                          deployment_id=plan.id, last_error="health check failed"))
        driver.step(now=1001.0)
        r = reg.rollout(plan.id)
        assert r.status == R.HALTED and r.reason == "1 device(s) failed, more than the allowed 0"
        assert (r.target("a").status, r.target("b").status) == (T.FAILED, T.NOT_STARTED)
        assert "health check failed; desired reset to previous digits:1" == r.target("a").reason
        assert sent[-1][1]["bundle"]["version"] == 1 and sent[-1][1]["allow_downgrade"] is True
        assert [t for t, _ in sent].count("edgekit/devices/b/desired") == 0


def test_a_bundle_file_gone_from_the_store_fails_its_devices_once_not_every_tick(registry_location, tmp_path):
    """The driver hashes the stored file's blocks for the desired state: a file deleted behind the
    registry's back fails the device (bundle missing) and the rollout halts, instead of a step error per tick."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        (tmp_path / f"{V2}.edgebundle").unlink()
        plan = plan_rollout(reg, "digits:2", devices=["a"], stages=[100])
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        driver.step(now=1001.0)
        r = reg.rollout(plan.id)
        assert sent == [] or all(p is None or p["bundle"]["version"] == 1 for _, p in sent)
        assert r.target("a").status == T.FAILED and "bundle file unreadable" in r.target("a").reason
        assert r.status in (R.HALTED, R.HALTING)


@pytest.mark.parametrize(("option", "value"), [("stage_timeout", float("nan")), ("stage_timeout", float("inf")),
                                             ("stage_timeout", -5.0), ("stage_timeout", 0.0),
                                             ("stage_soak", float("nan")), ("stage_soak", float("inf"))])
def test_a_rollout_needs_finite_positive_timings(registry_location, tmp_path, option, value):
    """`edge-fleet deploy --stage-timeout -5` timed every device out at once; inf never ended a stage (and printed
    `Infinity`, not JSON); NaN reached the database as a NOT NULL error. Refused up front, nothing stored."""
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        with pytest.raises(FleetError, match=f"--{option.replace('_', '-')} must be a finite number"):
            plan_rollout(reg, "digits:2", devices=["a"], **{option: value})
        assert reg.rollouts() == []


@pytest.mark.parametrize("template", ["http://cdn/{nope}", "http://cdn/{", "http://cdn/{0}", "http://cdn/{name.x}"])
def test_a_source_url_template_with_an_unknown_field_is_refused_with_the_fields_it_may_use(registry_location,
                                                                                         tmp_path, template):
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        with pytest.raises(FleetError, match="use {sha256}, {name}, {version} and {profile}"):
            plan_rollout(reg, "digits:2", devices=["a"], source_url=template)
        assert reg.rollouts() == []


def test_no_targets_names_a_few_devices_per_reason_not_thousands(registry_location, tmp_path):
    """A group of thousands that never reported made one error line of every id (and echoed a 20 MB id whole)."""
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        reg.record_reported(ReportedState("jetson", "idle", "jetson-orin-nano", "t"))
        ghosts = [f"ghost-{i}" for i in range(2000)] + ["x" * 100_000]
        with pytest.raises(NoTargets) as refused:
            plan_rollout(reg, "digits:2", devices=["jetson", *ghosts])
        message = str(refused.value)
        assert len(message) < 600, message
        assert "ghost-0, ghost-1, ghost-2, ghost-3, ghost-4 and 1996 more: unknown device" in message
        assert "jetson: profile jetson-orin-nano does not match the bundle's profile (pi)" in message


def test_a_restarted_server_continues_a_pending_rollout_from_the_registry(registry_location, tmp_path):
    with open_registry(registry_location) as reg:
        reg.add_bundle(_bundle(tmp_path, V2, 2))
        reg.record_reported(ReportedState("a", "idle", "pi", "t"))
        reg.record_reported(ReportedState("b", "idle", "pi", "t", current=BundleRef("digits", 2, V2)))
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[100])
    sent: list[str] = []
    with open_registry(registry_location) as reg:  # another process (a restarted server) takes over
        RolloutDriver(reg, Topics(), lambda topic, *_: sent.append(topic)).step(now=5.0)
        r = reg.rollout(plan.id)
        assert r.target("b").status == T.SUCCEEDED and r.target("b").reason == "already running this bundle"
        assert r.target("a").status == T.SENT and r.status == R.RUNNING and sent == ["edgekit/devices/a/desired"]
        assert r.target("a").previous_sha is None and r.target("a").sent_at == 5.0


def test_operator_requests_pause_resume_and_roll_back_even_a_finished_rollout(registry_location, tmp_path):
    """halt -> paused (the finished stage does not lead to the next), resume -> the next stage starts,
    rollback of the succeeded rollout -> each switched device gets its previous bundle back."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100], created_by="op")
        driver = _recording_driver(reg, sent)

        def switched(dev: str) -> None:
            reg.record_reported(ReportedState(dev, "succeeded", "pi", "t", current=BundleRef("digits", 2, V2),
                                              previous=BundleRef("digits", 1, V1), deployment_id=plan.id))

        driver.step(now=10.0)
        reg.request_rollout(plan.id, "halt", "op")
        driver.step(now=11.0)
        assert reg.rollout(plan.id).status == R.PAUSED and reg.rollout(plan.id).request is None
        switched("a")
        driver.step(now=12.0)  # stage 1 finished, but paused: stage 2 waits
        r = reg.rollout(plan.id)
        assert (r.status, r.stage, r.target("a").status, r.target("b").status) == (R.PAUSED, 0, T.SUCCEEDED, T.WAITING)
        assert [t for t, _ in sent] == ["edgekit/devices/a/desired"]
        reg.request_rollout(plan.id, "resume", "op")
        driver.step(now=13.0)
        driver.step(now=14.0)
        assert reg.rollout(plan.id).stage == 1 and sent[-1][0] == "edgekit/devices/b/desired"
        switched("b")
        driver.step(now=15.0)
        assert reg.rollout(plan.id).status == R.SUCCEEDED
        reg.request_rollout(plan.id, "rollback", "op")
        driver.step(now=16.0)
        r = reg.rollout(plan.id)
        assert r.status == R.HALTING and r.reason == "rolled back by op"
        assert {t: p["bundle"]["version"] for t, p in sent[-2:]} == {"edgekit/devices/a/desired": 1,
                                                                    "edgekit/devices/b/desired": 1}
        for dev in ("a", "b"):
            reg.record_reported(ReportedState(dev, "succeeded", "pi", "t", current=BundleRef("digits", 1, V1),
                                              deployment_id=f"{plan.id}-rollback"))
        driver.step(now=17.0)
        r = reg.rollout(plan.id)
        assert r.status == R.HALTED and {t.status for t in r.targets} == {T.ROLLED_BACK}
        reg.request_rollout(plan.id, "resume", "op")  # not allowed from halted: ignored and forgotten
        driver.step(now=18.0)
        assert reg.rollout(plan.id).status == R.HALTED and reg.rollout(plan.id).request is None


def test_a_driver_killed_halfway_through_a_stage_start_is_finished_by_the_next_without_repeats(registry_location,
                                                                                              tmp_path):
    """The driving server dies after publishing to the first device of a stage (kill -9 between two
    publishes). Another server's driver sends the rest, and only the rest: each device's desired
    state is published once. (Before the fix the stage stayed half-started until it timed out.)"""
    class Killed(BaseException):
        pass

    with open_registry(registry_location) as reg:
        for sha, v in ((V1, 1), (V2, 2)):
            reg.add_bundle(_bundle(tmp_path, sha, v))
        devices = ["a", "b", "c"]
        for dev in devices:
            reg.record_reported(ReportedState(dev, "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
        plan = plan_rollout(reg, "digits:2", devices=devices, stages=[100])
        sent: list[str] = []

        def dies_after_one(topic: str, _payload: bytes, _retain: bool) -> None:
            if sent:
                raise Killed()
            sent.append(topic)

        with pytest.raises(Killed):
            RolloutDriver(reg, Topics(), dies_after_one).step(now=10.0)
    with open_registry(registry_location) as reg:  # the server that takes the lease over
        RolloutDriver(reg, Topics(), lambda topic, *_: sent.append(topic)).step(now=11.0)
        r = reg.rollout(plan.id)
        assert sorted(sent) == [f"edgekit/devices/{d}/desired" for d in devices]
        assert [t.status for t in r.targets] == [T.SENT] * 3 and r.status == R.RUNNING


def test_a_device_that_comes_online_again_gets_its_desired_state_once_more(registry_location, tmp_path):
    """Retained messages stay on one node of an ejabberd cluster: a device that reconnects elsewhere
    would never see its desired state. Its presence after the send makes the driver resend it, once
    per announcement, unchanged (same issued_at, so the agent drops it if it already has it)."""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[100])
        reg.record_presence("a", "online", now=900.0)  # online before the send: nothing to resend
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        assert sorted(t for t, _ in sent) == ["edgekit/devices/a/desired", "edgekit/devices/b/desired"]
        first = dict(sent)["edgekit/devices/a/desired"]
        driver.step(now=1001.0)
        assert len(sent) == 2
        reg.record_presence("a", "online", now=1002.0)  # reconnected (to another node)
        driver.step(now=1003.0)
        driver.step(now=1004.0)
        assert [t for t, _ in sent[2:]] == ["edgekit/devices/a/desired"]
        assert sent[2][1] == first and first["issued_at"] == 1000.0
        reg.record_presence("b", "offline", now=1005.0)  # going away is no reason to resend
        driver.step(now=1006.0)
        assert len(sent) == 3
        assert reg.rollout(plan.id).target("a").status == T.SENT


def test_the_resend_record_is_dropped_when_a_device_leaves_flight_and_when_its_rollout_ends(registry_location,
                                                                                           tmp_path):
    """Devices that came online again after their desired state was sent get it once more; the driver's
    record of that goes with the device once it finished and with the rollout once it ended. (Before the
    fix every (rollout, device) ever resent stayed in the record for the life of the server.)"""
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[100])
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        for dev in ("a", "b"):
            reg.record_presence(dev, "online", now=1001.0)  # back online, maybe on another broker node
        driver.step(now=1002.0)
        driver.step(now=1003.0)
        assert [t for t, _ in sent] == ["edgekit/devices/a/desired", "edgekit/devices/b/desired"] * 2
        assert driver.resend_records == 2
        reg.record_reported(ReportedState("a", "succeeded", "pi", "t", current=BundleRef("digits", 2, V2),
                                          previous=BundleRef("digits", 1, V1), deployment_id=plan.id))
        driver.step(now=1004.0)
        assert reg.rollout(plan.id).target("a").status == T.SUCCEEDED and driver.resend_records == 1
        reg.request_rollout(plan.id, "rollback", "op")  # a rolls back, b is cancelled
        driver.step(now=1005.0)
        driver.step(now=1006.0)
        r = reg.rollout(plan.id)
        assert (r.status, r.target("a").status, r.target("b").status) == (R.HALTING, T.ROLLING_BACK, T.CANCELLED)
        assert [t for t, _ in sent[4:]] == ["edgekit/devices/a/desired", "edgekit/devices/b/desired"]  # once each
        assert driver.resend_records == 1  # a, until its roll-back is confirmed
        reg.record_reported(ReportedState("a", "succeeded", "pi", "t", current=BundleRef("digits", 1, V1),
                                          deployment_id=f"{plan.id}-rollback"))
        driver.step(now=1007.0)
        assert reg.rollout(plan.id).status == R.HALTED and driver.resend_records == 0


def test_the_resend_record_of_a_rollout_another_server_finished_is_dropped(registry_location, tmp_path):
    sent: list[tuple[str, dict | None]] = []
    with open_registry(registry_location) as reg:
        _two_devices_on_v1(reg, tmp_path)
        plan = plan_rollout(reg, "digits:2", devices=["a"], stages=[100])
        driver = _recording_driver(reg, sent)
        driver.step(now=1000.0)
        reg.record_presence("a", "online", now=1001.0)
        driver.step(now=1002.0)
        assert driver.resend_records == 1
        RolloutDriver(reg, Topics(), lambda *_: None).step(now=1003.0)  # the lease moved: another driver ...
        reg.record_reported(ReportedState("a", "succeeded", "pi", "t", current=BundleRef("digits", 2, V2),
                                          deployment_id=plan.id))
        RolloutDriver(reg, Topics(), lambda *_: None).step(now=1004.0)  # ... finishes the rollout
        assert reg.rollout(plan.id).status == R.SUCCEEDED
        driver.step(now=1005.0)  # this server drives again: the ended rollout is forgotten
        assert driver.resend_records == 0
