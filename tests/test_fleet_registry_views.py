"""The registry's listings for the API and console, on a real SQLite file: update history written only
on changes, latency samples, filters over the JSON columns, pagination, change stamps, tokens, audit."""

from __future__ import annotations

import pytest

from edge_agent.ota.protocol import BundleRef, ReportedState, Telemetry
from edge_fleet.errors import TokenExists
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import DeviceFilter, TokenRecord

V1, V2 = "1" * 64, "2" * 64


def report(dev: str, phase: str, sha: str, version: int, progress: float | None = None, **kw) -> ReportedState:
    return ReportedState(dev, phase, kw.pop("profile", "raspberry-pi-4"), "t",
                         current=BundleRef("digits", version, sha), progress=progress, **kw)


def test_history_records_changes_not_progress_ticks(registry_location, tmp_path):
    with open_registry(registry_location) as reg:
        reg.record_reported(report("a", "idle", V1, 1), now=1)
        for i, p in enumerate((0.1, 0.5, 0.9)):
            reg.record_reported(report("a", "downloading", V1, 1, progress=p, deployment_id="r-1"), now=2 + i)
        reg.record_reported(report("a", "failed", V1, 1, deployment_id="r-1", last_error="self-test"), now=9)
        page = reg.device_events("a", 10, 0)
        assert page.total == 3 and [(e.phase, e.at) for e in page.items] == [("failed", 9), ("downloading", 2),
                                                                               ("idle", 1)]
        assert page.items[0].last_error == "self-test" and page.items[0].current.version == 1
        assert [e.phase for e in reg.device_events("a", 1, 1).items] == ["downloading"]


def test_latency_samples_filters_sorting_groups_and_pages(registry_location, tmp_path):
    with open_registry(registry_location) as reg:
        for i, dev in enumerate(("c", "a", "b")):
            reg.record_reported(report(dev, "idle", V2 if dev == "b" else V1, 2 if dev == "b" else 1,
                                       profile="jetson-orin-nano" if dev == "c" else "raspberry-pi-4"))
            reg.record_telemetry(dev, Telemetry(None, 10, 0, {"p50_ms": 1.0 + i, "p99_ms": 5.0}), now=100 + i)
        reg.record_telemetry("a", Telemetry(None, 20, 0, {"p50": 7.0, "p99": 9.0}), now=200)
        reg.record_presence("a", "online")
        reg.set_group("a", "lobby")
        reg.set_group("b", "lobby")
        assert [(s.at, s.p50) for s in reg.latency_samples("a", 10)] == [(101, 2.0), (200, 7.0)]

        def ids(**kw) -> list[str]:
            return [d.id for d in reg.devices_page(DeviceFilter(**kw), 50, 0).items]
        assert ids() == ["a", "b", "c"]
        assert ids(profile="raspberry-pi-4") == ["a", "b"] and ids(version=2) == ["b"] and ids(model="digits") == ids()
        assert ids(latency_min=2.5) == ["a", "b"] and ids(latency_max=1.5) == ["c"] and ids(group="lobby") == ["a", "b"]
        assert ids(presence="online") == ["a"] and ids(presence="unknown") == ["b", "c"] and ids(search="b") == ["b"]
        by_latency = reg.devices_page(DeviceFilter(), 2, 0, sort="latency", descending=True)
        assert by_latency.total == 3 and [d.id for d in by_latency.items] == ["a", "b"]
        assert reg.groups_page(10, 0).items == [("lobby", 2)]
        assert reg.device_counts()["presence"] == {"online": 1, "unknown": 2}


def test_change_stamp_moves_on_writes_from_this_and_other_connections(registry_location, tmp_path):
    with open_registry(registry_location) as reg, open_registry(registry_location) as other:
        first = reg.change_stamp()
        assert reg.change_stamp() == first
        other.set_group("x", "g")  # the CLI in another process
        second = reg.change_stamp()
        assert second != first
        reg.record_presence("x", "online")  # the server's own MQTT thread
        assert reg.change_stamp() != second


def test_tokens_unique_revocable_and_audit_filters(registry_location, tmp_path):
    with open_registry(registry_location) as reg:
        reg.add_token(TokenRecord("ci", "operator", "h1", 1.0, "local:root"))
        with pytest.raises(TokenExists, match="already exists"):
            reg.add_token(TokenRecord("ci", "admin", "h2", 2.0))
        assert reg.token_by_hash("h1").role == "operator" and reg.token_by_hash("nope") is None
        assert reg.revoke_token("ci", 3.0) and not reg.revoke_token("ci", 4.0)
        assert reg.tokens()[0].revoked_at == 3.0 and "token_hash" not in reg.tokens()[0].to_json()
        # rotation: a revoked token's name is taken again (it said "already exists (revoke it ...)" once revoked)
        reg.add_token(TokenRecord("ci", "viewer", "h3", 3.5, "local:root"))
        assert reg.token_by_hash("h1") is None and reg.token_by_hash("h3").revoked_at is None
        assert [(t.name, t.role) for t in reg.tokens()] == [("ci", "viewer")]
        reg.add_audit("ci", "operator", "deploy", "digits:2", {"group": "lobby"}, "ok", now=5)
        reg.add_audit("ci", "operator", "publish", "x", {}, "denied: needs admin", now=6)
        reg.add_audit("local:root", "admin", "deploy", "digits:3", {}, "ok", now=7)
        assert [e.id for e in reg.audit_page(10, 0).items] == [3, 2, 1]
        assert [e.target for e in reg.audit_page(10, 0, actor="ci", action="deploy").items] == ["digits:2"]
        assert reg.audit_page(1, 0).total == 3 and reg.audit_page(10, 0).items[2].detail == {"group": "lobby"}


def test_history_and_latency_samples_are_bounded_per_device(registry_location, tmp_path):
    from edge_fleet.registry.sql import HISTORY_KEEP, LATENCY_KEEP

    with open_registry(registry_location) as reg:
        for i in range(LATENCY_KEEP + 200):
            reg.record_telemetry("a", Telemetry(None, i, 0, {"p50_ms": 1.0, "p99_ms": 2.0}), now=float(i))
            reg.record_reported(report("a", "downloading" if i % 2 else "idle", V1, 1), now=float(i))
        samples = reg.latency_samples("a", 10_000)
        assert LATENCY_KEEP <= len(samples) < LATENCY_KEEP + 50 and samples[-1].at == LATENCY_KEEP + 199
        history = reg.device_events("a", 10, 0)
        assert HISTORY_KEEP <= history.total < HISTORY_KEEP + 50 and history.items[0].at == LATENCY_KEEP + 199
