"""Shared pieces of the OTA agent tests: bundles, an agent home with v1 installed, a broker, the fleet stub,
and small `edge-agent` CLI wrappers. Test modules import the fixtures they use by name."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import TrustStore, generate_keypair
from edge_agent.cli import main as agent_main
from edge_agent.home import AgentHome
from edge_agent.ota.daemon import Agent, AgentConfig
from edge_fleet.broker import start_broker

from .ota_helpers import FleetStub, repack

PROFILE = "raspberry-pi-4"
BLOCK = 2048  # small blocks: the ~50 KB bundle travels as ~25 blocks


# --- bundles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(digits, int8_bundle, tmp_path_factory):
    """v1 (int8 fixture), v2 and broken/foreign v3 variants, re-signed from v1.

    v2 is v1's payload re-signed as version 2 (what `edge-convert --model-version 2` would
    produce for the same weights) - a second conversion would double this module's set-up time.
    """
    out = tmp_path_factory.mktemp("ota-bundles")

    def bump(v: int, **fields):
        def edit(m):
            m.version = v
            for k, val in fields.items():
                setattr(m, k, val)
        return edit

    def alter_selftest(files):
        path = files["selftest.npz"]
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["output.0"] = arrays["output.0"] + 25.0  # recorded answers no longer match the model
        altered = path.with_name("altered.npz")
        np.savez(altered, **arrays)
        files["selftest.npz"] = altered

    other_key, _ = generate_keypair(out / "other-keys")
    v2 = repack(int8_bundle, out / "digits-v2.edgebundle", digits.key, digits.pub, bump(2))
    return {
        "v1": int8_bundle,
        "v2": v2,
        "bad_selftest": repack(v2, out / "bad-selftest-v3.edgebundle", digits.key, digits.pub, bump(3), alter_selftest),
        "untrusted": repack(v2, out / "untrusted-v3.edgebundle", other_key, digits.pub, bump(3)),
        "pi5": repack(v2, out / "pi5-v3.edgebundle", digits.key, digits.pub, bump(3, profile="raspberry-pi-5")),
    }


def cli(home: Path, *args: str) -> int:
    return agent_main(["--home", str(home), *args])


def install(home: Path, bundle: Path, pub: Path, *extra: str) -> int:
    return cli(home, "install", str(bundle), "--trust", str(pub), "--profile", PROFILE, "--threads", "1", *extra)


def status(home: Path, capsys) -> dict:
    capsys.readouterr()
    assert cli(home, "status", "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def v1_home(bundles, digits, tmp_path_factory) -> Path:
    """An agent home with v1 side-loaded into slot a (copied per test)."""
    home = tmp_path_factory.mktemp("template") / "home"
    assert install(home, bundles["v1"], digits.pub) == 0
    return home


@pytest.fixture
def home(v1_home, tmp_path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(v1_home, target)
    return target


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = start_broker(tmp_path_factory.mktemp("mosq"), prefer="mosquitto", fallback=False)
    yield b
    b.stop()


@pytest.fixture
def fleet(broker):
    f = FleetStub(broker.host, broker.port)
    yield f
    f.close()


def agent_in_process(home: Path, url: str, dev: str, pub: Path, **kw) -> tuple[Agent, threading.Thread]:
    cfg = AgentConfig(broker=url, device_id=dev, profile_name=PROFILE, latency_budget_ms=500.0,
                      trust=TrustStore.from_paths([pub]), telemetry_interval_s=0.5, threads=1, **kw)
    agent = Agent(AgentHome(home), cfg)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread
