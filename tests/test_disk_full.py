"""A full disk never replaces a working model: the agent home lives on a small real tmpfs."""

from __future__ import annotations

import json
import os

import pytest

from edge_agent.cli import main as agent_main

from . import fault_helpers

pytestmark = fault_helpers.needs_root


@pytest.fixture()
def small_disk(tmp_path):
    with fault_helpers.small_disk(tmp_path / "disk") as mount:
        yield mount


def test_full_disk_refuses_update_and_keeps_the_model(small_disk, digits, int8_bundle, int8_v2_bundle, capsys):
    home = small_disk / "agent"
    common = ["--trust", str(digits.pub), "--profile", "raspberry-pi-4"]
    assert agent_main(["--home", str(home), "install", str(int8_bundle), *common]) == 0
    # fill the disk, leaving far less than the update needs
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(small_disk / "filler", "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * (free - 2 * 1024 * 1024))
    capsys.readouterr()
    rc = agent_main(["--home", str(home), "install", str(int8_v2_bundle), *common])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 18, err
    assert len(err) == 1 and "disk space" in err[0]
    assert agent_main(["--home", str(home), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    active = status["slots"][status["active_slot"]]
    assert status["version"] == 1 and (active["lifecycle"], active["health"]) == ("active", "good")
    # with space back, the same update goes through
    (small_disk / "filler").unlink()
    assert agent_main(["--home", str(home), "install", str(int8_v2_bundle), *common]) == 0
    capsys.readouterr()
    assert agent_main(["--home", str(home), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2


def test_one_free_space_check_with_one_margin(small_disk):
    """Staging, unpacking and slots all ask `check_free_space`: it keeps DISK_MARGIN_BYTES free."""
    from edge_agent.bundle import DISK_MARGIN_BYTES, InsufficientSpace, check_free_space

    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    check_free_space(small_disk / "staging", free - DISK_MARGIN_BYTES - 4096, "download the bundle")
    with pytest.raises(InsufficientSpace, match="not enough disk space to download the bundle"):
        check_free_space(small_disk / "staging", free - DISK_MARGIN_BYTES + 4096, "download the bundle")
