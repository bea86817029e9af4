"""The agent's code must run on Python 3.10 (JetPack 6 ships it); no 3.10 interpreter exists here, so
vermin checks the minimum version statically: edge_agent and device_profiles (the device side)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO

VERMIN = [str(Path(sys.executable).parent / "vermin"), "-t=3.10-", "--violations", "--no-tips", "--eval-annotations",
          "--no-parse-comments"]


def test_device_side_code_runs_on_python_310():
    r = subprocess.run([*VERMIN, "edge_agent", "device_profiles"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_catches_311_only_code(tmp_path: Path):
    (tmp_path / "new.py").write_text("import tomllib\n")
    (tmp_path / "group.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    r = subprocess.run([*VERMIN, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "tomllib" in r.stdout and "`except*` requires" in r.stdout
