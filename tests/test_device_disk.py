"""`edge-device` on a device whose disk is full, against a real OpenSSH server and a real small tmpfs.

A full disk is the usual state of a neglected SD card: `df` says 0 KiB free, and SFTP reports the
write that fails as a bare "Failure". Both used to read as "copy interrupted, run again to resume" (84)."""

from __future__ import annotations

import asyncio
import os

import pytest

from edge_agent.errors import code_of, exit_code

from . import fault_helpers
from .conftest import REPO
from .device_fixtures import sshd  # noqa: F401 - fixture

pytestmark = [fault_helpers.needs_root, pytest.mark.timeout(300)]


def test_setup_on_a_full_disk_is_refused_as_disk_space_before_anything_is_sent(sshd, tmp_path, capsys):  # noqa: F811
    """0 MB free was taken for "df unreadable": setup built the wheelhouse and went on into the full disk."""
    from edge_agent.bundle import generate_keypair
    from edge_device.cli import main

    os.environ.setdefault("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit"))
    _, pub = generate_keypair(tmp_path / "keys")
    with fault_helpers.small_disk(tmp_path / "disk", "1m") as disk:
        fault_helpers.fill(disk)
        capsys.readouterr()
        code = main(["-q", "setup", sshd.target, *sshd.cli_args(), "--remote-dir", str(disk / "opt"), "--unit-dir",
                     str(tmp_path / "units"), "--broker", "mqtt://127.0.0.1:1", "--trust", str(pub)])
        err = capsys.readouterr().err
        made = (disk / "opt").exists()
    assert code == exit_code("disk-space"), err
    assert f"0 MB free under {disk / 'opt'}" in err and "free some space" in err and not made, err


def test_setup_on_a_read_only_disk_is_setup_failed_before_anything_is_built(sshd, tmp_path, capsys):  # noqa: F811
    """A read-only --remote-dir (logged in as root) exited 1, "other error", with a clear line: it is setup failing
    (87), and it is not "free some space" either, though a tiny read-only disk has none."""
    import subprocess

    from edge_agent.bundle import generate_keypair
    from edge_device.cli import main

    _, pub = generate_keypair(tmp_path / "keys")
    disk = tmp_path / "ro"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,ro", "tmpfs", str(disk)], check=True)
    try:
        capsys.readouterr()
        code = main(["-q", "setup", sshd.target, *sshd.cli_args(), "--remote-dir", str(disk / "opt"), "--unit-dir",
                     str(tmp_path / "units"), "--broker", "mqtt://127.0.0.1:1", "--trust", str(pub)])
        err = capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert code == exit_code("setup-failed") == 87, err
    assert f"cannot write under {disk} (Read-only file system)" in err and "--remote-dir" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_disk_that_fills_up_during_a_push_is_disk_space_and_its_partial_copy_is_removed(sshd, tmp_path):  # noqa: F811
    """The .part was kept for a "resume" that could only fail again, and kept the device's disk full meanwhile."""
    from edge_device.ssh import Target, connect

    bundle = tmp_path / "big.edgebundle"
    bundle.write_bytes(os.urandom(512 * 1024))
    target = Target.parse(sshd.target, identity=sshd.identity, known_hosts=sshd.known_hosts)

    async def push() -> BaseException | None:
        async with connect(target) as dev:
            try:
                await dev.push(bundle, str(disk / "incoming" / "b.edgebundle"))
            except Exception as exc:  # noqa: BLE001 - the error is what is checked
                return exc
        return None

    with fault_helpers.small_disk(tmp_path / "disk", "256k") as disk:
        exc = asyncio.run(push())
        left = sorted(p.name for p in (disk / "incoming").iterdir())
    assert exc is not None and code_of(exc) == exit_code("disk-space"), repr(exc)
    assert str(exc).startswith(f"{sshd.target}: no space left under {disk / 'incoming'}") and "resume" not in str(exc)
    assert left == [], left
