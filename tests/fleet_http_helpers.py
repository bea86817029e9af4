"""A real `edge-fleet serve --http 0` as a subprocess, API tokens for it, and agents beside it.

Tests talk to it with a real HTTP client (httpx) or a real browser (Playwright + Debian's
chromium); nothing is mocked: the server starts its own embedded broker, agents are
`edge-agent serve` processes (tests/ota_helpers.AgentProcess).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from edge_agent.cli import main as agent_main
from edge_fleet.access import create_token, local_actor
from edge_fleet.registry import open_registry
from edge_fleet.broker.logins import BrokerLogins
from .ota_helpers import REPO, AgentProcess, wait_for, wait_login_works, with_login


class FleetProcess:
    """`edge-fleet serve --http 0 --json` in HOME; `.http` is the console/API URL, `.broker` the MQTT URL."""

    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        self.log = home.parent / f"{home.name}-serve.log"
        self.logfh = open(self.log, "w")
        cmd = [sys.executable, "-m", "edge_fleet.cli", "serve", "--home", str(home), "--http", "0", "--json",
               "--embedded", "mosquitto", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logfh, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise AssertionError(f"edge-fleet serve did not start: {self.log.read_text()[-2000:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.http: str = self.info["http"]
        self.broker: str = self.info["broker"]

    def device_url(self, device_id: str) -> str:
        """The broker URL with the device's own login (registered the way `edge-fleet devices login` does;
        the running server picks it up)."""
        logins, _ = BrokerLogins.load_or_create(self.home / "broker")
        return wait_login_works(with_login(self.broker, device_id, logins.add_device(device_id)))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logfh.close()
        return self.proc.returncode


def fleet_home(tmp: Path, trust: Path) -> Path:
    """A fleet folder whose trusted/ holds the test signing key (the server verifies uploads with it)."""
    home = tmp / "fleet"
    (home / "trusted").mkdir(parents=True)
    shutil.copy(trust, home / "trusted" / "signing.pub")
    return home


def make_tokens(home: Path, *roles: str) -> dict[str, str]:
    """One token per role, named after it, created the way `edge-fleet tokens create` does: {role: secret}."""
    with open_registry(home / "fleet.db", store_dir=home / "bundles") as reg:
        return {role: create_token(reg, local_actor(), role, role)[0] for role in roles}


def client(base: str, token: str | None = None, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Client:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers={**auth, **(headers or {})}, **{"timeout": 60, **kw})


def upload_bundles(api: httpx.Client, *bundles: Path) -> None:
    """Upload each bundle through the API (POST /api/v1/bundles), as the console's drop zone does."""
    for b in bundles:
        r = api.post("/api/v1/bundles", params={"filename": b.name}, content=b.read_bytes())
        assert r.status_code == 201, r.text


def start_agent(tmp: Path, broker: str, device_id: str, bundle: Path, trust: Path, **kw: Any) -> AgentProcess:
    """An agent with `bundle` installed, serving against `broker`."""
    home = tmp / device_id
    assert agent_main(["--home", str(home), "install", str(bundle), "--trust", str(trust),
                       "--profile", "raspberry-pi-4"]) == 0
    return AgentProcess(home, broker, device_id, trust, **kw)


def wait_rollout(api: httpx.Client, rollout_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    def done() -> dict | None:
        r = api.get(f"/api/v1/rollouts/{rollout_id}").json()
        return r if r["status"] in statuses else None
    return wait_for(done, timeout, f"rollout {rollout_id} to be {statuses}", interval=0.2)


def wait_devices(api: httpx.Client, ids: list[str], version: int | None = None) -> None:
    def ready() -> bool:
        rows = {d["id"]: d for d in api.get("/api/v1/devices", params={"limit": 500}).json()["items"]}
        return all(i in rows and rows[i]["presence"] == "online" and rows[i]["version"] is not None
                   and (version is None or rows[i]["version"] == version) for i in ids)
    wait_for(ready, what=f"devices {ids} online" + (f" on v{version}" if version else ""), interval=0.2)
