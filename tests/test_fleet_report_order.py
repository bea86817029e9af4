"""A device's reports are ordered by its agent's series (boot_id, seq), not by its wall clock.

A clock that steps back by less than the 300 s reorder window (an RTC running fast that NTP then
corrects) made the registry drop every report after the step, "succeeded" included, and the rollout
timed the device out. Here: the ordering rule as properties, the registry on both engines, a real
agent numbering its reports, and a staged rollout through a real Mosquitto and fleet server whose
device's clock steps back mid-update.
"""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ota.protocol import ReportedState
from edge_agent.ota.report_order import REORDER_WINDOW, ReportStamp, supersedes
from edge_fleet.cli import main as fleet_main
from edge_fleet.registry import open_registry

from .ota_fixtures import agent_in_process, broker, bundles, fleet as fleet_stub, home, v1_home  # noqa: F401 - fixtures
from .ota_helpers import wait_for
from .test_fleet_rollout import fleet, known  # noqa: F401 - the fleet server fixture, used by name

clocks = st.floats(min_value=0, max_value=2e9, allow_nan=False)


def _newest(delivered: list[ReportStamp]) -> ReportStamp | None:
    """What a receiver keeps after taking `delivered` in that order."""
    stored = None
    for stamp in delivered:
        if supersedes(stamp, stored):
            stored = stamp
    return stored


@given(st.lists(clocks, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_within_one_boot_the_highest_seq_is_kept_whatever_the_clock_or_delivery_order(times, rnd):
    stamps = [ReportStamp(t, "boot-a", seq) for seq, t in enumerate(times, 1)]
    rnd.shuffle(stamps)
    assert _newest(stamps).seq == len(times)


@given(clocks, clocks, st.integers(1, 2**63 - 1), st.integers(1, 2**63 - 1))
def test_a_new_boot_id_starts_a_new_series(stored_at, at, stored_seq, seq):
    assert supersedes(ReportStamp(at, "boot-b", seq), ReportStamp(stored_at, "boot-a", stored_seq))


@given(clocks, clocks, st.sampled_from([(None, None), ("boot-a", 7)]))
def test_unnumbered_reports_keep_the_clock_rule(stored_at, at, stored_series):
    """An older agent's report (no boot_id/seq): older by less than the window is out of order."""
    stored = ReportStamp(stored_at, *stored_series)
    assert supersedes(ReportStamp(at, None, None), stored) == (not stored_at - REORDER_WINDOW < at < stored_at)


def test_the_registry_keeps_reports_after_a_small_clock_step_back_and_still_drops_late_ones(registry_location):
    def report(phase: str, at: float, seq: int | None, boot: str | None = "boot-a") -> ReportedState:
        return ReportedState("a", phase, "pi", "t", deployment_id="r-1", updated_at=at, boot_id=boot, seq=seq)

    with open_registry(registry_location) as reg:
        reg.record_reported(report("downloading", 1000.0, 1))
        reg.record_reported(report("succeeded", 940.0, 3))  # the clock stepped back 60 s
        assert reg.device("a").phase == "succeeded"
        reg.record_reported(report("verifying", 990.0, 2))  # late: an earlier seq of the same boot
        assert reg.device("a").phase == "succeeded"
        reg.record_reported(report("idle", 900.0, 1, boot="boot-b"))  # the agent restarted
        assert reg.device("a").phase == "idle"
        reg.record_reported(report("downloading", 800.0, None, boot=None))  # an older agent: the clock rule
        assert reg.device("a").phase == "idle"
        assert [e.phase for e in reg.device_events("a", 10, 0).items] == ["idle", "succeeded", "downloading"]


def test_the_agent_numbers_its_reports_and_a_restart_starts_a_new_series(home, bundles, digits, broker, fleet_stub):
    seen: list[ReportedState] = []
    for start in range(2):
        agent, thread = agent_in_process(home, broker.url, "seq-dev", digits.pub)
        try:
            wait_for(lambda: len(fleet_stub.reported.get("seq-dev", [])) > len(seen), what="a report")
            if start == 0:
                fleet_stub.deploy("seq-dev", bundles["v2"], "dep-seq")
                assert fleet_stub.wait_phase("seq-dev", "dep-seq").phase == "succeeded"
        finally:
            agent.stop()
            thread.join(20)
        seen = list(fleet_stub.reported["seq-dev"])
    boots = list(dict.fromkeys(r.boot_id for r in seen))
    assert len(boots) == 2 and None not in boots
    for boot in boots:
        seqs = [r.seq for r in seen if r.boot_id == boot]
        assert seqs == list(range(1, len(seqs) + 1))


def test_a_rollout_succeeds_on_a_device_whose_clock_steps_back_beside_an_older_agent(fleet, capsys):
    """The numbered device's clock jumps back 60 s once it has started downloading (NTP correcting a fast
    RTC): its "verifying" and "succeeded" look older than its "downloading". The unnumbered device is an
    agent from before the series, on a steady clock: the server still takes its reports by the clock rule."""
    server, reg, sim = fleet
    stepping = sim("pi-step")
    stepping.clock = lambda: time.time() - (60.0 if stepping.phase in ("verifying", "succeeded") else 0.0)
    sim("pi-old", numbered=False)
    wait_for(lambda: known(reg, "pi-step", "pi-old"), what="devices to report")
    rc = fleet_main(["deploy", "digits:2", "--devices", "pi-step,pi-old", "--stage-timeout", "30", "--wait",
                     "--wait-timeout", "60", "--db", str(reg.db_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "succeeded", out
    assert {d["device_id"]: d["status"] for d in out["devices"]} == {"pi-step": "succeeded", "pi-old": "succeeded"}
    assert [p for p, _ in stepping.history] == ["downloading", "verifying", "succeeded"]
    assert reg.device("pi-step").phase == "succeeded"
