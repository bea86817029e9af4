"""The update state machine as data: the transition table's shape, and update.json's schema and counter.

The table is checked as a graph (every unfinished phase handles success, failure and a state
loop, and every path ends in a final phase), so a new row cannot create a loop the store
counter would have to break.
"""

from __future__ import annotations

import json
import logging

import pytest

from edge_agent.home import AgentHome
from edge_agent.ota.job import JOB_SCHEMA_VERSION, UpdateJob, job_file, load_job, save_job
from edge_agent.ota.phases import (
    FINAL, MAX_STATE_STORES, TRANSITIONS, UNFINISHED, UPDATE_STEPS, Event, InvalidTransition, Phase, next_phase,
    store_limit,
)
from edge_agent.ota.protocol import PHASES, BundleRef, DesiredState, ReportedState, dumps
from edge_agent.ota.states import STATES
from edge_agent.ota.transfer import MAX_REPAIRS


def _desired() -> DesiredState:
    return DesiredState(deployment_id="dep-1", bundle=BundleRef("digits", 2, "ab" * 32), size=100,
                        profile="raspberry-pi-4", signature={})


def test_every_unfinished_phase_has_a_state_and_handles_failure_and_state_loops():
    assert set(STATES) == set(UNFINISHED)
    for phase in UNFINISHED:
        for event in (Event.DONE, Event.FAILURE, Event.STATE_LOOP):
            assert (phase, event) in TRANSITIONS, (phase, event)
    for phase in UPDATE_STEPS:  # a newer deployment may supersede any update step
        assert TRANSITIONS[(phase, Event.CANCELLED)].is_failure_handling
    assert all(store_limit(p) is None for p in FINAL)
    assert store_limit(Phase.HEALTH_CHECK) == MAX_STATE_STORES == 28


def test_every_path_through_the_table_ends_in_a_final_phase():
    """No cycle among unfinished phases but `damaged` (a download that failed its signed check goes back to
    have its blocks re-checked), which the job bounds: at most MAX_REPAIRS rounds, each a few stores, well
    inside the store limit. The counter is the only guard against a crash, never against the table itself."""
    def ends(phase: Phase, seen: tuple[Phase, ...]) -> None:
        assert phase not in seen, f"cycle: {' -> '.join(map(str, (*seen, phase)))}"
        if phase.is_final:
            return
        for (p, event), nxt in TRANSITIONS.items():
            if p is phase and event is not Event.DAMAGED:
                ends(nxt, (*seen, phase))

    for phase in UNFINISHED:
        ends(phase, ())
    assert {(p, n) for (p, e), n in TRANSITIONS.items() if e is Event.DAMAGED} == {
        (Phase.VERIFYING, Phase.DOWNLOADING), (Phase.INSTALLING, Phase.DOWNLOADING)}
    assert len(UPDATE_STEPS) + 3 * MAX_REPAIRS < MAX_STATE_STORES  # every repair round stores 3 phases
    # a state loop never goes back into an update step
    assert all(not TRANSITIONS[(p, Event.STATE_LOOP)].is_update_step for p in UNFINISHED)


def test_happy_path_failure_and_rollback_rows():
    phase, path = Phase.DOWNLOADING, []
    while not phase.is_final:
        phase = next_phase(phase, Event.DONE)
        path.append(phase.value)
    assert path == ["verifying", "installing", "health_check", "shadowing", "switching", "succeeded"]
    assert next_phase(Phase.HEALTH_CHECK, Event.FAILURE) is Phase.ABORTING
    assert next_phase(Phase.SHADOWING, Event.FAILURE) is Phase.ABORTING  # shadow_failed: the old model stays
    assert next_phase(Phase.ABORTING, Event.DONE) is Phase.FAILED
    assert next_phase(Phase.SWITCHING, Event.FAILURE) is Phase.ROLLING_BACK
    assert next_phase(Phase.ROLLING_BACK, Event.DONE) is Phase.ROLLED_BACK
    assert next_phase(Phase.ROLLING_BACK, Event.NOTHING_TO_UNDO) is Phase.ABORTING
    assert next_phase(Phase.SUCCEEDED, Event.LIVE_FAILURE) is Phase.ROLLED_BACK
    with pytest.raises(InvalidTransition, match="no transition from phase failed on event live_failure"):
        next_phase(Phase.FAILED, Event.LIVE_FAILURE)
    with pytest.raises(InvalidTransition):
        next_phase(Phase.SUCCEEDED, Event.DONE)


def test_the_protocol_phases_are_the_enum():
    assert PHASES == tuple(p.value for p in Phase)
    for phase in Phase:  # the fleet parses every phase a device can report
        state = ReportedState(device_id="d", phase=phase.value, profile="p", agent_version="1")
        assert ReportedState.parse(dumps(state)).phase == phase.value


def test_every_store_counts_and_the_record_has_a_schema_version(tmp_path):
    home = AgentHome(tmp_path)
    job = UpdateJob.for_desired(_desired())
    for _ in range(3):
        save_job(home, job)
    record = json.loads(job_file(home).read_text())
    assert record["schema_version"] == JOB_SCHEMA_VERSION and record["state_stores"] == 3
    assert record["phase"] == "downloading" and "progress" not in record
    again = load_job(home)
    assert again.phase is Phase.DOWNLOADING and again.state_stores == 3
    save_job(home, again)
    assert load_job(home).state_stores == 4


def test_an_old_record_without_schema_version_is_migrated(tmp_path, caplog):
    home = AgentHome(tmp_path)
    old = UpdateJob.for_desired(_desired()).to_record()
    del old["schema_version"], old["state_stores"]
    old["phase"] = "health_check"
    job_file(home).parent.mkdir(parents=True)
    job_file(home).write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        job = load_job(home)
    assert job.phase is Phase.HEALTH_CHECK and job.state_stores == 0 and job.deployment_id == "dep-1"
    assert "has no schema version (written by an older agent)" in caplog.text
    save_job(home, job)
    assert json.loads(job_file(home).read_text())["schema_version"] == JOB_SCHEMA_VERSION


@pytest.mark.parametrize("change", [{"schema_version": JOB_SCHEMA_VERSION + 1}, {"schema_version": "1"},
                                    {"phase": "dancing"}, {"state_stores": "many"}])
def test_a_record_this_agent_cannot_read_is_abandoned_with_one_log_line(tmp_path, caplog, change):
    home = AgentHome(tmp_path)
    record = {**UpdateJob.for_desired(_desired()).to_record(), **change}
    job_file(home).parent.mkdir(parents=True)
    job_file(home).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        assert load_job(home) is None
    assert len(caplog.records) == 1 and str(job_file(home)) in caplog.text


def test_the_document_shows_the_table_as_it_is_in_the_code():
    """docs/ota-state-machine.md embeds `python -m edge_agent.ota.phases` output: it stays honest."""
    from pathlib import Path

    from edge_agent.ota.phases import state_machine_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ota-state-machine.md").read_text()
    generated = doc.split("<!-- generated: begin -->\n", 1)[1].split("<!-- generated: end -->", 1)[0]
    assert generated == state_machine_markdown(), "run `python -m edge_agent.ota.phases` and paste its output"
    for (phase, event), nxt in TRANSITIONS.items():
        assert f"| `{phase}` | `{event}` | `{nxt}` |" in generated
    for event in Event:  # every event is explained in the prose
        assert f"| `{event}` |" in doc.split("<!-- generated: begin -->")[0]
