"""The fleet writer's bounded inbox (edge_fleet/report_inbox.py): progress merged, the oldest update
dropped at the bound, phase changes and presence never; and a real server whose registry stalls
keeps the inbox bounded while devices flood it."""

from __future__ import annotations

import json
import threading

from edge_agent.ota.protocol import Topics
from edge_fleet.report_inbox import ReportInbox

TOPICS = Topics()


def _reported(dev: str, phase: str, progress: float = 0.0, deployment: str | None = "r1") -> tuple[str, bytes]:
    body = {"device_id": dev, "phase": phase, "profile": "pi", "agent_version": "t", "deployment_id": deployment,
            "progress": progress, "updated_at": 1.0}
    return TOPICS.reported(dev), json.dumps(body).encode()


def _drain(inbox: ReportInbox) -> list[tuple[str, str | float]]:
    inbox.close()
    out = []
    while (item := inbox.get()) is not None:
        topic, payload = item
        dev, kind = TOPICS.parse(topic)
        o = json.loads(payload) if payload else {}
        out.append((dev, kind, o.get("phase", o.get("state", "")), o.get("progress")))
    return out


def test_progress_reports_merge_into_the_queued_one_and_phase_changes_stay():
    inbox = ReportInbox(TOPICS.parse)
    inbox.put(*_reported("a", "idle", deployment=None))
    inbox.put(*_reported("a", "downloading", 0.1))
    inbox.put(*_reported("b", "downloading", 0.1))
    for p in (0.2, 0.3, 0.4):
        inbox.put(*_reported("a", "downloading", p))  # 0.2 queued; 0.3 and 0.4 merged into it, in its place
    inbox.put(*_reported("a", "verifying", 1.0))
    inbox.put(*_reported("a", "verifying", 1.0))  # a repeat after a phase change: queued after it
    inbox.put(TOPICS.presence("a"), b'{"state":"online","at":1}')
    assert inbox.merged == 2 and inbox.dropped == 0
    assert _drain(inbox) == [
        ("a", "reported", "idle", 0.0), ("a", "reported", "downloading", 0.1), ("b", "reported", "downloading", 0.1),
        ("a", "reported", "downloading", 0.4), ("a", "reported", "verifying", 1.0),
        ("a", "reported", "verifying", 1.0), ("a", "presence", "online", None)]


def test_at_the_bound_the_oldest_update_is_dropped_never_a_phase_change_or_presence():
    inbox = ReportInbox(TOPICS.parse, max_updates=3)
    for i in range(6):
        inbox.put(*_reported(f"d{i}", "downloading", 0.0))  # each device's first report: a phase change
    for i in range(6):
        inbox.put(*_reported(f"d{i}", "downloading", 0.5))  # progress of six devices: only 3 may wait
        inbox.put(TOPICS.presence(f"d{i}"), b'{"state":"online","at":1}')
    assert inbox.dropped == 3
    got = _drain(inbox)
    assert [d for d, k, ph, p in got if k == "reported" and p == 0.0] == [f"d{i}" for i in range(6)]
    assert [d for d, k, ph, p in got if k == "reported" and p == 0.5] == ["d3", "d4", "d5"]
    assert [d for d, k, *_ in got if k == "presence"] == [f"d{i}" for i in range(6)]


def test_a_taken_update_is_not_merged_into_and_the_queue_forgets_it():
    inbox = ReportInbox(TOPICS.parse, max_updates=2)
    inbox.put(*_reported("a", "downloading", 0.1))
    inbox.put(*_reported("a", "downloading", 0.2))  # merged
    assert inbox.get()[0] == TOPICS.reported("a")
    inbox.put(*_reported("a", "downloading", 0.3))  # the writer has the last one: a new entry
    for _ in range(1000):
        inbox.put(TOPICS.telemetry("a"), b"{}")  # merged into one
        assert inbox.get() is not None
    assert len(inbox) == 0 and len(inbox._updates) == 0 and inbox.dropped == 0


def test_a_writer_far_behind_keeps_the_queue_bounded():
    """A flood of progress from 2,000 devices while the writer is stalled stays within the bound."""
    inbox = ReportInbox(TOPICS.parse, max_updates=500)
    release = threading.Event()
    taken: list[tuple[str, bytes]] = []

    def writer() -> None:
        release.wait()
        while (item := inbox.get()) is not None:
            taken.append(item)

    t = threading.Thread(target=writer)
    t.start()
    for round_ in range(5):
        for i in range(2000):
            inbox.put(*_reported(f"d{i}", "downloading", round_ / 10))
    assert len(inbox) == 2000 + 500  # the first report of each device (a phase change) + the bound
    release.set()
    inbox.close()
    t.join(30)
    assert len(taken) == 2500 and inbox.dropped == 4 * 2000 - 500
