"""An operator's halt/resume/rollback that the server could not apply is answered as refused, not as done;
and waiting for the server to apply one holds no API worker thread.

The server applies requests after its pass over the rollouts; a rollout that changed meanwhile (a paused one
halted by its in-flight devices' failures) made the request illegal, and the server only logged a warning:
the API answered 200 with the new status and the CLI exited 0, so the operator read "halted" as the effect of
"resume". Now 409 / exit 64 (action-refused) naming the rollout's status. The driver is RolloutDriver on the
API's real SQLite registry, stepped by the test at the moment of the race.
"""

from __future__ import annotations

import threading

import httpx

from edge_agent.ota.protocol import BundleRef, ReportedState
from edge_fleet.cli import main as fleet_main
from edge_fleet.errors import exit_code
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus as R
from edge_fleet.rollout import plan_rollout
from .ota_helpers import wait_for
from .test_fleet_probe import api  # noqa: F401 - the real API app under uvicorn, used by name
from .test_fleet_rollout_states import V1, V2, _bundle, _recording_driver, _two_devices_on_v1


def _paused_with_a_device_in_flight(reg, tmp_path) -> tuple[str, object]:
    """A rollout sent to device a, then paused by an operator: (its id, the driver)."""
    _two_devices_on_v1(reg, tmp_path)
    rid = plan_rollout(reg, "digits:2", devices=["a", "b"], stages=[50, 100]).id
    driver = _recording_driver(reg, [])
    driver.step(now=10.0)
    reg.request_rollout(rid, "halt", "op")
    driver.step(now=11.0)
    assert reg.rollout(rid).status == R.PAUSED
    return rid, driver


def _in_thread(work) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    return thread, out


def _device_a_fails_and_the_server_steps(reg, rid: str, driver) -> None:
    """Once the resume is stored: a reports failure, so the driver's pass halts the rollout before the request."""
    wait_for(lambda: reg.rollout(rid).request == "resume", what="the resume request stored")
    reg.record_reported(ReportedState("a", "failed", "pi", "t", current=BundleRef("digits", 1, V1),
                                      deployment_id=rid, last_error="verify: bad signature"))
    driver.step(now=12.0)


def test_a_resume_overtaken_by_an_automatic_halt_is_a_409_naming_the_status(api, tmp_path):
    url, token, _ = api
    with open_registry(tmp_path / "fleet.db") as reg:
        rid, driver = _paused_with_a_device_in_flight(reg, tmp_path)
        thread, answers = _in_thread(lambda: httpx.post(f"{url}/api/v1/rollouts/{rid}/resume", params={"wait": 30},
                                                        headers={"Authorization": f"Bearer {token}"}, timeout=60))
        _device_a_fails_and_the_server_steps(reg, rid, driver)
        thread.join(60)
        assert reg.rollout(rid).status == R.HALTED
    answer = answers[0]
    assert answer.status_code == 409, answer.text
    err = answer.json()
    assert (err["error"], err["exit_code"], err["status"]) == ("action-refused", exit_code("action-refused"), "halted")
    assert err["message"].startswith(f"resume not applied: rollout {rid} became halted") and "\n" not in err["message"]


def test_the_cli_says_the_overtaken_resume_was_not_applied_with_exit_64(tmp_path, capsys):
    db = tmp_path / "fleet.db"
    with open_registry(db) as reg:
        rid, driver = _paused_with_a_device_in_flight(reg, tmp_path)
        thread, codes = _in_thread(lambda: fleet_main(["resume", rid, "--db", str(db)]))
        _device_a_fails_and_the_server_steps(reg, rid, driver)
        thread.join(60)
    err = capsys.readouterr().err.strip().splitlines()
    assert codes == [exit_code("action-refused")] == [64]
    assert len(err) == 1 and f"resume not applied: rollout {rid} became halted" in err[0], err


def test_requests_waiting_for_the_server_hold_no_api_thread(api, tmp_path):
    """`POST .../halt?wait=30` slept in a worker thread of the pool every plain endpoint runs in (40 threads):
    40 scripts halting rollouts while no server applied them stalled the whole API until their waits ran out.
    The wait is on the event loop now: with more waiting requests than the pool has threads, every one is
    stored and another request is answered while they all still wait; applying them answers each."""
    url, token, _ = api
    headers = {"Authorization": f"Bearer {token}"}
    with open_registry(tmp_path / "fleet.db") as reg:
        for sha, v in ((V1, 1), (V2, 2)):
            reg.add_bundle(_bundle(tmp_path, sha, v))
        ids = []
        for i in range(45):  # more than the pool's 40 threads
            reg.record_reported(ReportedState(f"d{i}", "idle", "pi", "t", current=BundleRef("digits", 1, V1)))
            ids.append(plan_rollout(reg, "digits:2", devices=[f"d{i}"], stages=[100]).id)
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda rid=rid: answers.append(httpx.post(
            f"{url}/api/v1/rollouts/{rid}/halt", params={"wait": 30}, headers=headers, timeout=90))) for rid in ids]
        for t in threads:
            t.start()
        wait_for(lambda: len(reg.requested_rollouts()) == len(ids), what="every halt request stored")
        meanwhile = httpx.get(f"{url}/api/v1/rollouts/{ids[0]}", headers=headers, timeout=90)
        assert meanwhile.status_code == 200 and meanwhile.json()["request"] == "halt"
        assert answers == []  # all 45 still waiting: none was held back until another's wait ran out
        _recording_driver(reg, []).step(now=10.0)  # the server applies them: each waiter answers at once
        for t in threads:
            t.join(90)
    assert sorted((a.status_code, a.json()["status"]) for a in answers) == [(200, "paused")] * len(ids)
