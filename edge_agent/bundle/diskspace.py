"""One free-space check for everything the agent writes a bundle into (staging, unpacking, slots)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import InsufficientSpace

# Room left over after a write, so the device does not run its disk to zero (logs, state files, the OS).
DISK_MARGIN_BYTES = 16 << 20


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """InsufficientSpace unless `folder`'s file system has `needed` bytes plus the margin free."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise InsufficientSpace(
            f"not enough disk space to {what}: needs {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free on {folder}"
        )
