"""An idle agent does no model work beyond a periodic health probe (a Pi Zero 2 W has 512 MB and four
A53 cores): counted in inferences, not CPU time. CPU/RSS figures: scripts/bench_idle.py."""

from __future__ import annotations

import time

from .ota_fixtures import PROFILE, agent_in_process, broker, bundles, home, v1_home  # noqa: F401 - fixtures
from .ota_helpers import wait_for


def test_idle_agent_runs_one_health_probe_not_a_loop(home, broker, digits):  # noqa: F811
    from edge_agent.ota.daemon.config import AgentConfig

    assert AgentConfig(broker="mqtt://x", device_id="d", profile_name=PROFILE, latency_budget_ms=None,
                       trust=None).infer_interval_s == 30.0  # type: ignore[arg-type]
    agent, thread = agent_in_process(home, broker.url, "dev-idle", digits.pub)  # the default interval
    try:
        wait_for(lambda: agent.loop.current is not None and agent.loop.inferences >= 1, what="the first health probe")
        time.sleep(3.0)  # the old built-in loop ran ~60 inferences in this time
        assert agent.loop.inferences == 1 and agent.loop.errors == 0
    finally:
        agent.stop()
        thread.join(20)


def test_onnxruntime_pools_do_not_spin_while_idle(int8_bundle, digits, tmp_path):
    from edge_agent.home import unpacked_bundle
    from edge_agent.bundle import TrustStore
    from edge_agent.runtimes import load_session

    with unpacked_bundle(int8_bundle, TrustStore.from_paths([digits.pub]), None) as vb:
        session = load_session(vb.unpacked_to, vb.manifest, threads=2)
        config = session._session.get_session_options().get_session_config_entry  # type: ignore[attr-defined]
        assert config("session.intra_op.allow_spinning") == "0" == config("session.inter_op.allow_spinning")
