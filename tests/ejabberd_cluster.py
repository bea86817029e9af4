"""A real two-node MQTT broker cluster on loopback for tests: Debian's ejabberd (mod_mqtt), Erlang clustering.

Each node gets its own config, database (Mnesia) folder, logs, node name and free MQTT port; the
second joins the first (`ejabberdctl join_cluster`). ejabberd runs as its `ejabberd` system user
(ejabberdctl switches to it), so the folders belong to that user. MQTT logins are ejabberd accounts:
one is registered for the whole cluster. What ejabberd 23.01 does across nodes (docs/fleet.md):
live messages are routed between nodes; retained messages stay on the node they were published to,
and `$share` subscriptions are not offered.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_port

CONFIG = """hosts: ["localhost"]
loglevel: warning
certfiles: []
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1000
auth_method: [internal]
modules:
  mod_mqtt: {{}}
"""
DOMAIN = "localhost"


class EjabberdCluster:
    """start() -> self; ports[i] is node i's MQTT port; user/password log in on every node."""

    def __init__(self, nodes: int = 2) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edgekit-ejabberd-"))
        tag = secrets.token_hex(3)  # node names are global on the machine (epmd): make them unique
        self.names = [f"edgekit{i}-{tag}@localhost" for i in range(nodes)]
        self.ports: list[int] = []
        self.user, self.password = f"fleet@{DOMAIN}", secrets.token_hex(8)

    def _ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        d = self.root / f"n{i}"
        return subprocess.run(["ejabberdctl", "--ctl-config", str(d / "ctl.cfg"), "--node", self.names[i],
                               "--spool", str(d / "spool"), "--logs", str(d / "logs"), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> "EjabberdCluster":
        if not shutil.which("ejabberdctl"):
            raise RuntimeError("ejabberd is missing: apt-get install ejabberd (scripts/setup_env.sh does)")
        for i in range(len(self.names)):
            d = self.root / f"n{i}"
            for sub in ("spool", "logs"):
                (d / sub).mkdir(parents=True)
            self.ports.append(free_port())
            (d / "ejabberd.yml").write_text(CONFIG.format(port=self.ports[i]))
            # our own ctl config: Debian's /etc/ejabberd/ejabberdctl.cfg would point at the system config
            (d / "ctl.cfg").write_text(f"EJABBERD_CONFIG_PATH={d / 'ejabberd.yml'}\nEJABBERD_PID_PATH={d / 'pid'}\n")
        if os.geteuid() == 0:
            user = pwd.getpwnam("ejabberd")
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        for i in range(len(self.names)):
            self._start_node(i)
        for i in range(1, len(self.names)):
            joined = self._ctl(i, "join_cluster", self.names[0])
            if joined.returncode:
                raise RuntimeError(f"ejabberd join_cluster failed: {joined.stdout}{joined.stderr}")
        self._ctl(0, "register", self.user.split("@")[0], DOMAIN, self.password)
        return self

    def _start_node(self, i: int, tries: int = 3) -> None:
        """Start node i; a port taken since it was picked (eaddrinuse in its log) gets a new port, not a failure."""
        d = self.root / f"n{i}"
        for attempt in range(tries):
            self._ctl(i, "start")
            log = self._wait_started(i)
            if log is None:
                return
            if "eaddrinuse" not in log or attempt == tries - 1:
                raise RuntimeError(f"ejabberd node {i} did not start: {log[-1500:]}")
            self._ctl(i, "stop")
            self._ctl(i, "stopped", timeout=60)
            self.ports[i] = free_port()
            (d / "ejabberd.yml").write_text(CONFIG.format(port=self.ports[i]))
            (d / "logs" / "error.log").unlink(missing_ok=True)

    def _wait_started(self, i: int) -> str | None:
        """None once node i answers `status`; its error log's text if it does not within 60 s or its listener failed."""
        log = self.root / f"n{i}" / "logs" / "error.log"
        deadline = time.monotonic() + 60
        while self._ctl(i, "status", timeout=30).returncode:
            text = log.read_text(errors="replace") if log.exists() else ""
            if time.monotonic() > deadline or "Failed to start ejabberd application" in text:
                return text
            time.sleep(0.5)
        return None

    def nodes(self) -> list[str]:
        return self._ctl(0, "list_cluster").stdout.split()

    def stop_node(self, i: int) -> None:
        self._ctl(i, "stop")
        self._ctl(i, "stopped", timeout=60)

    def kill_node(self, i: int) -> None:
        """kill -9 node i's Erlang VM (its pid file): no goodbye to its clients or to the other node."""
        pid = int((self.root / f"n{i}" / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def remove(self) -> None:
        for i in range(len(self.names)):
            self.stop_node(i)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "EjabberdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
