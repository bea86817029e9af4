"""Where a benchmark's work folders go: under one folder per run, removed when the run ends unless --keep-work.

The accuracy benchmarks convert several models per network (bundles, ONNX and TFLite intermediates: hundreds of MB a
run); left in /tmp, a few runs fill a small disk. Their `tempfile.mkdtemp` calls land in this run's folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def add_keep_work(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--keep-work", action="store_true",
                    help="keep the run's bundles, reports and intermediate models (the folder is printed at the end)")


@contextmanager
def run_folder(keep: bool, prefix: str = "edgekit-bench-") -> Iterator[Path]:
    """Every temporary folder made inside the block lives under one folder, removed afterwards unless `keep`."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    before, tempfile.tempdir = tempfile.tempdir, str(base)
    try:
        yield base
    finally:
        tempfile.tempdir = before
        if keep:
            print(f"work folders kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
