"""The staging folder's files of one bundle download (MQTT `.part` + block list, HTTP `.http.part`, a
side-loaded copy), and their removal: after an install, a bad file, or a download abandoned by a crash."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_STAGING_SUFFIXES = (".part", ".blocks.json", ".http.part", ".file", ".file.partial")


def discard_staging(staging_dir: Path, sha256: str) -> None:
    for suffix in _STAGING_SUFFIXES:
        (Path(staging_dir) / f"{sha256}{suffix}").unlink(missing_ok=True)


def clean_staging(staging_dir: Path, keep: str | None) -> list[str]:
    """Delete every staging file but those of bundle `keep` (the job a restart resumes); the names removed.

    Downloads abandoned by a crash, a cancel or an older agent would otherwise stay forever
    (a sparse `.part` file can claim the size of the whole bundle)."""
    removed = []
    folder = Path(staging_dir)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if keep is not None and path.name.startswith(keep):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        log.info("removed %d abandoned staging file(s): %s", len(removed), ", ".join(sorted(removed)))
    return removed


__all__ = ["clean_staging", "discard_staging"]
