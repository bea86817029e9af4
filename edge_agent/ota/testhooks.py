"""Test hook: make the agent stop dead at a named point so a test can `kill -9` it there.

Set EDGEKIT_TEST_PAUSE_PHASE to a phase name (downloading, verifying, installing,
health_check, switching) and the agent, on entering that phase (after persisting it),
writes `<home>/ota/paused-at` containing the phase name and then sleeps forever.
EDGEKIT_TEST_PAUSE_AFTER_BLOCKS=N does the same inside an MQTT download once N blocks are
stored and their bitmap is on disk (marker text `blocks:N`). Never set these in production.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_PHASE_ENV = "EDGEKIT_TEST_PAUSE_PHASE"
PAUSE_BLOCKS_ENV = "EDGEKIT_TEST_PAUSE_AFTER_BLOCKS"


def pause_blocks() -> int | None:
    value = os.environ.get(PAUSE_BLOCKS_ENV)
    return int(value) if value and value.isdigit() else None


def pause_point(name: str, ota_dir: Path, force: bool = False) -> None:
    """Hang here forever if the test hook asks for `name` (or `force`); no-op otherwise."""
    if not force and os.environ.get(PAUSE_PHASE_ENV) != name:
        return
    log.warning("TEST HOOK: pausing at %s (waiting to be killed)", name)
    Path(ota_dir).mkdir(parents=True, exist_ok=True)
    (Path(ota_dir) / "paused-at").write_text(name)
    threading.Event().wait()
