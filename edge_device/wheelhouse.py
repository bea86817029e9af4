"""A wheelhouse for the device's platform, built on the host: the device needs no internet.

pip resolves `edgekit[agent]` for the device's Python version, CPU architecture and glibc
(`pip download --platform manylinux_2_X_ARCH --python-version X.Y --only-binary=:all:`), plus pip
itself so a venv made `--without-pip` (Debian images often lack ensurepip) can install from it.
Built once per (Python, arch, glibc) in the host's cache; only the edgekit wheel is rebuilt.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import EdgekitError

log = logging.getLogger(__name__)


class WheelhouseFailed(EdgekitError):
    code_name = "setup-failed"


@dataclass(frozen=True)
class Wheelhouse:
    folder: Path
    files: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def pip_wheel(self) -> Path:
        return next(f for f in self.files if f.name.startswith("pip-"))


def cache_root() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def platform_tags(arch: str, glibc: str) -> list[str]:
    """manylinux tags a device with this glibc accepts, newest first (PEP 600; 2014 = 2_17)."""
    minor = int(glibc.split(".")[1]) if glibc.count(".") == 1 and glibc.split(".")[1].isdigit() else 17
    return [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]


def _source_checkout() -> Path | None:
    """The repo edgekit runs from, when it is a checkout (editable install); None for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "edge_agent").is_dir() else None


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--quiet", *args]
    log.info("wheelhouse: %s", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "pip failed").splitlines()[-1]
        raise WheelhouseFailed(f"building the wheelhouse failed ({what}): {last}", detail=r.stderr)


def build_wheelhouse(python_version: str, arch: str, glibc: str, extra: str = "agent",
                     folder: Path | None = None) -> Wheelhouse:
    """Wheels of edgekit[extra] and its dependencies for the device, in the host's cache."""
    py = ".".join(python_version.split(".")[:2])
    out = folder or cache_root() / "wheelhouse" / f"py{py}-{arch}-glibc{glibc or '2.17'}"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("edgekit-*.whl"):
        old.unlink()
    src = _source_checkout()
    if src is not None:
        _pip(["wheel", "--no-deps", "--wheel-dir", str(out), str(src)], "edgekit wheel from the checkout")
        edgekit = next(out.glob("edgekit-*.whl"))
        spec = f"{edgekit}[{extra}]"
    else:
        spec = f"edgekit[{extra}]=={__version__}"
    platform = [a for tag in platform_tags(arch, glibc) for a in ("--platform", tag)]
    _pip(["download", "--dest", str(out), "--only-binary=:all:", *platform, "--python-version", py,
          "--implementation", "cp", spec, "pip"], f"dependencies for Python {py} on {arch}")
    files = tuple(sorted(out.glob("*.whl")))
    return Wheelhouse(out, files)
