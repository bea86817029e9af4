"""Real faults for the reliability tests: a small tmpfs that really fills up (ENOSPC from the kernel).

Mounting needs root, which CI has (the suite runs as root in its container); elsewhere these
tests are skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@contextmanager
def small_disk(folder: Path, size: str = "40m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (created), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` until only `leave` bytes are free (0: until the kernel says ENOSPC); the filler file."""
    filler = disk / "filler"
    with open(filler, "ab") as fh:
        chunk = b"\0" * (1 << 20)
        while True:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                fh.write(chunk[: min(len(chunk), free)])
                fh.flush()
            except OSError:
                break
    return filler


def sigterm_once(cmd: list[str], env: dict[str, str], ready: str, folder: Path, timeout: float = 120) -> tuple[int, str]:
    """Run `cmd`, send SIGTERM as soon as `folder` holds a path matching the glob `ready`; (exit code, stderr)."""
    import signal
    import sys
    import time

    proc = subprocess.Popen([sys.executable, *cmd], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not list(folder.glob(ready)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"{cmd[:3]} ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err
