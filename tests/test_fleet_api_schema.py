"""Property tests of the API against its own OpenAPI document (Schemathesis): for requests generated
from the schema, valid and invalid, the app never fails with a 5xx, and every refusal has the one
error shape {"error", "message", "exit_code"}. The app runs in-process (ASGI) on a real SQLite
registry with devices, a bundle record and a rollout in it; the fleet server is not needed here.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from edge_agent.ota.protocol import BundleRef, ReportedState
from edge_fleet.access import create_token, local_actor
from edge_fleet.api.app import create_app
from edge_fleet.api.deps import ApiState
from edge_fleet.registry import BundleRecord, open_registry
from edge_fleet.rollout import plan_rollout

SHA = "a" * 64


_FOLDER = tempfile.TemporaryDirectory(prefix="api-schema-")  # removed when the test process ends


def _app():
    folder = Path(_FOLDER.name)
    reg = open_registry(folder / "fleet.db", store_dir=folder / "bundles")
    reg.add_bundle(BundleRecord(SHA, "digits", 2, "raspberry-pi-4", 3, {"precision": "int8"}, {}, "k1",
                                folder / "bundles" / "missing", time.time()))
    for i in range(3):
        reg.record_reported(ReportedState(device_id=f"pi-{i}", profile="raspberry-pi-4", phase="idle",
                                          current=BundleRef("digits", 1, "b" * 64), agent_version="t"))
    reg.set_group("pi-0", "lobby")
    plan_rollout(reg, "digits:2", devices=["pi-1"])
    secret = create_token(reg, local_actor(), "admin", "admin")[0]
    return create_app(ApiState(reg, max_upload=1_000_000), console=False), secret


APP, TOKEN = _app()
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP).exclude(path="/api/v1/events")


# One test per operation, parametrized here rather than by `schema.parametrize()`: that one gives every operation
# the same node id, and pytest-xdist (EDGEKIT_TEST_WORKERS) runs one item per node id, so 17 of 18 would silently not run.
OPERATIONS = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_answers_every_generated_request_without_a_server_error(label):
    op = OPERATIONS[label]
    cases = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))  # valid, invalid

    @given(case=cases)
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        answers_without_a_server_error(case)

    check()


def answers_without_a_server_error(case) -> None:
    if case.path.endswith("/{action}"):
        case.query = {**(case.query or {}), "wait": 0}  # nobody applies requests here: do not wait for it
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"error", "message", "exit_code"}, body
