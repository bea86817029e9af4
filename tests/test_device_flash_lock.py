"""The device's flash lock against a real OpenSSH server when the link drops without closing.

A killed host closes its TCP connection and sshd ends the session (the lock goes with it); a dropped
Wi-Fi link or a suspended laptop closes nothing: sshd keeps the session until TCP keepalive gives up,
about two hours, and every flash meanwhile was refused as busy (85). The holder here is a real
`edge-device` lock taken by another process, then frozen with SIGSTOP: its connection stays open and
silent, as over a dead link."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from edge_agent.errors import code_of, exit_code

from .conftest import REPO
from .device_fixtures import sshd  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)

HOLDER = """
import asyncio, sys
from pathlib import Path
from edge_device.flash import flash_lock
from edge_device.layout import Layout
from edge_device.ssh import Target, connect

async def main():
    target = Target.parse(sys.argv[1], identity=Path(sys.argv[2]), known_hosts=Path(sys.argv[3]))
    async with connect(target) as dev, flash_lock(dev, Layout(root=sys.argv[4])):
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _try_lock(sshd, remote) -> BaseException | None:  # noqa: ANN001 - SshServer
    from edge_device.flash import flash_lock
    from edge_device.layout import Layout
    from edge_device.ssh import Target, connect

    async def attempt() -> BaseException | None:
        target = Target.parse(sshd.target, identity=sshd.identity, known_hosts=sshd.known_hosts)
        try:
            async with connect(target) as dev, flash_lock(dev, Layout(root=str(remote))):
                return None
        except Exception as exc:  # noqa: BLE001 - the error is what is checked
            return exc

    return asyncio.run(attempt())


def test_a_flash_whose_link_went_dead_lets_go_of_the_lock(sshd, tmp_path):  # noqa: F811
    remote = tmp_path / "opt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEKIT_TEST_LOCK_STALE_S": "3"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, sshd.target, str(sshd.identity), str(sshd.known_hosts),
                               str(remote)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = _try_lock(sshd, remote)
        assert busy is not None and code_of(busy) == exit_code("busy"), repr(busy)  # a live holder keeps it
        os.kill(holder.pid, signal.SIGSTOP)  # the host goes silent; its TCP connection stays open
        deadline = time.monotonic() + 60  # a bound on waiting (the holder's limit is 3 s), not a measurement
        while (exc := _try_lock(sshd, remote)) is not None and time.monotonic() < deadline:
            assert code_of(exc) == exit_code("busy"), repr(exc)
            time.sleep(1)
        assert exc is None, f"the silent host still holds the lock: {exc}"
    finally:
        holder.kill()
        holder.wait()
