"""Several fleet servers act as one fleet: two real `edge-fleet serve` processes on one PostgreSQL
registry and one Mosquitto, sharing device messages ($share) and one rollouts lease. The one driving
a staged rollout is killed with kill -9 halfway; the other takes the lease over and finishes it, and
no device gets its update twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from edge_fleet.broker import start_broker
from edge_fleet.cli import main as fleet_main
from edge_fleet.registry import open_registry
from edge_fleet.registry.records import RolloutStatus, TargetStatus

from .fleet_sim import SimDevice, ref_of
from .pg_cluster import PgCluster

pytestmark = pytest.mark.failover
REPO = Path(__file__).resolve().parents[1]
LEASE_TTL = 2.0


def _serve(url: str, home: Path, broker: str, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `edge-fleet serve` process in a share group; (process, its server id)."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_fleet.cli", "serve", "--db", url, "--home", str(home),
                             "--broker", broker, "--share-group", "fleet", "--lease-ttl", str(LEASE_TTL), "--json"],
                            stdout=subprocess.PIPE, stderr=log.open("wb"), cwd=REPO, text=True)
    line = proc.stdout.readline()
    assert line, f"serve did not start: {log.read_text()[-2000:]}"
    return proc, json.loads(line)["server_id"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lease_holder(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name='rollouts'").fetchone()
    return row[0] if row else None


def test_kill_9_of_the_driving_server_another_finishes_the_rollout_once(pg_cluster, tmp_path, int8_bundle,
                                                                        int8_v2_bundle, digits):
    url = pg_cluster.create_database()
    home = tmp_path / "fleet"
    for bundle in (int8_bundle, int8_v2_bundle):
        assert fleet_main(["publish", str(bundle), "--trust", str(digits.pub), "--db", url, "--home", str(home)]) == 0
    procs: list[subprocess.Popen] = []
    sims: list[SimDevice] = []
    with start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False) as broker:
        try:
            servers = {}
            for name in ("a", "b"):
                proc, server_id = _serve(url, home, broker.url, tmp_path / f"serve-{name}.log")
                procs.append(proc)
                servers[server_id] = proc
            devices = [f"pi-{i}" for i in range(6)]
            sims = [SimDevice(broker.host, broker.port, d, current=ref_of(int8_bundle)).start() for d in devices]
            with open_registry(url) as reg:
                _wait(lambda: len(reg.devices()) == len(devices), 20, "every device known to the fleet")
            # three stages; the soak keeps the rollout going long enough to kill its driver between stages
            assert fleet_main(["deploy", "digits:2", "--devices", ",".join(devices), "--stages", "34,67,100",
                               "--stage-soak", "1", "--db", url, "--home", str(home)]) == 0
            with open_registry(url) as reg:
                rid = reg.rollouts()[0].id
                _wait(lambda: any(t.status == TargetStatus.SUCCEEDED for t in reg.rollout(rid).targets), 60,
                      "the first stage to succeed")
                driver = _lease_holder(url)
                assert driver in servers
                os.kill(servers[driver].pid, signal.SIGKILL)
                servers[driver].wait(10)
                assert reg.rollout(rid).status == RolloutStatus.RUNNING  # killed halfway
                _wait(lambda: reg.rollout(rid).status == RolloutStatus.SUCCEEDED, 90, "the rollout to finish")
                (survivor,) = set(servers) - {driver}
                assert _lease_holder(url) == survivor
                assert all(reg.device(d).current_sha == ref_of(int8_v2_bundle).sha256 for d in devices)
            v2 = ref_of(int8_v2_bundle).sha256
            for sim in sims:  # each device downloaded and switched exactly once
                assert [p for p, sha in sim.history if sha == v2].count("downloading") == 1, sim.history
                assert sim.current.sha256 == v2
            log = (tmp_path / f"serve-{'a' if servers[survivor] is procs[0] else 'b'}.log").read_text()
            assert "now drives the rollouts" in log
        finally:
            for sim in sims:
                sim.stop()
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def test_database_lost_mid_rollout_the_rollout_waits_and_finishes_when_it_is_back(tmp_path, int8_bundle,
                                                                                  int8_v2_bundle, digits):
    """PostgreSQL stops (like a crash) between two stages and comes back seconds later: the server
    keeps running, the rollout continues where it was, and a device that appeared meanwhile (its
    report could not be stored then) is in the registry afterwards (retained reports read again)."""
    with PgCluster(Path(tempfile.mkdtemp(prefix="edgekit-pg-lost-"))) as pg:
        url = pg.create_database()
        home = tmp_path / "fleet"
        for bundle in (int8_bundle, int8_v2_bundle):
            assert fleet_main(["publish", str(bundle), "--trust", str(digits.pub), "--db", url,
                               "--home", str(home)]) == 0
        sims: list[SimDevice] = []
        with start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False) as broker:
            proc, _ = _serve(url, home, broker.url, tmp_path / "serve.log")
            try:
                devices = ["pi-0", "pi-1", "pi-2"]
                sims = [SimDevice(broker.host, broker.port, d, current=ref_of(int8_bundle)).start() for d in devices]
                with open_registry(url) as reg:
                    _wait(lambda: len(reg.devices()) == len(devices), 20, "every device known to the fleet")
                assert fleet_main(["deploy", "digits:2", "--devices", ",".join(devices), "--stages", "1,100",
                                   "--stage-soak", "2", "--db", url, "--home", str(home)]) == 0
                with open_registry(url) as reg:
                    rid = reg.rollouts()[0].id
                    _wait(lambda: any(t.status == TargetStatus.SUCCEEDED for t in reg.rollout(rid).targets), 60,
                          "the first stage to succeed")
                pg.stop()  # -m immediate: the server's connection breaks mid-soak
                late = SimDevice(broker.host, broker.port, "pi-late", current=ref_of(int8_bundle)).start()
                sims.append(late)
                time.sleep(4)
                assert proc.poll() is None  # the server waits, it does not die
                assert sims[2].current == ref_of(int8_bundle)  # stage 2 did not start meanwhile
                pg.restart()
                with open_registry(url) as reg:
                    _wait(lambda: reg.rollout(rid).status == RolloutStatus.SUCCEEDED, 90, "the rollout to finish")
                    _wait(lambda: reg.device("pi-late") is not None, 20, "the late device's retained report")
                assert all(s.current == ref_of(int8_v2_bundle) for s in sims[:3])
                log = (tmp_path / "serve.log").read_text()
                assert "reading the devices' retained reports" in log
            finally:
                for sim in sims:
                    sim.stop()
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
