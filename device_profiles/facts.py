"""What a board is: the facts read from its files, gathered the same way over SSH and on the device.

One table of sources (SOURCES) drives both collectors: `probe_script()` is the POSIX shell script
`edge-device probe` runs over SSH (a device may have no usable Python yet), `collect_local()` is
what `edge-agent doctor` reads in Python (under QEMU user mode only Python's own file reads see
the emulated sysroot). Both give the same {section: text} dict, and `parse_facts` is the one parser.
This module imports nothing else of the project.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# section -> file read as is (missing files give "")
FILES = {
    "model": "/proc/device-tree/model",
    "tegra": "/etc/nv_tegra_release",
    "os": "/etc/os-release",
    "cpuinfo": "/proc/cpuinfo",
    "meminfo": "/proc/meminfo",
}
GPU_NODES = ("/dev/nvhost-ctrl-gpu", "/dev/nvidia0")  # a GPU device node, not just a toolkit folder
# section -> shell command (probe only; collect_local computes the same in Python); ROOT prefixes the
# device files (empty on a device; a folder shaped like a board's root in tests)
COMMANDS = {
    "arch": "uname -m",
    "nproc": "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN",
    "video": 'ls "$ROOT"/dev/video* 2>/dev/null | sed "s|^$ROOT||"',
    "cuda": "for n in " + " ".join(GPU_NODES) + '; do [ -e "$ROOT$n" ] && echo "$n"; done; true',
    "libc": "ldd --version 2>&1 | head -n 1",
}
PYTHONS = ("python3.13", "python3.12", "python3.11", "python3.10", "python3")
PY_VERSION_CODE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
MIN_PYTHON = (3, 10)


def probe_script(python: str | None = None, disk_path: str = "$HOME", root: str = "") -> str:
    """The POSIX shell script printing `==section` headers and each source's text (board files under `root`)."""
    lines = ["export LC_ALL=C", f"ROOT={shlex.quote(root.rstrip('/'))}"]
    for name, path in FILES.items():
        lines.append(f"echo '=={name}'; cat \"$ROOT\"{path} 2>/dev/null | tr -d '\\000'; echo")
    for name, cmd in COMMANDS.items():
        lines.append(f"echo '=={name}'; {cmd}")
    lines.append(f"echo '==df'; d={disk_path}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; df -Pk \"$d\" | tail -n 1")
    candidates = (python,) if python else PYTHONS
    lines.append("echo '==python'")
    for p in candidates:
        lines.append(f"if command -v {p} >/dev/null 2>&1; then echo \"$(command -v {p}) $({p} -c \"{PY_VERSION_CODE}\" 2>/dev/null)\"; fi")
    return "\n".join(lines) + "\n"


def split_sections(text: str) -> dict[str, str]:
    """The probe script's output as {section: text}."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("==") and line[2:].strip().isidentifier():
            current = line[2:].strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def collect_local(disk_path: str | Path | None = None, root: str | Path = "/") -> dict[str, str]:
    """The same sections as the probe script, read from this machine by Python (board files under `root`)."""
    out: dict[str, str] = {}
    base = Path(root)
    for name, path in FILES.items():
        try:
            out[name] = (base / path.lstrip("/")).read_bytes().replace(b"\0", b"").decode("utf-8", "replace")
        except OSError:
            out[name] = ""
    out["arch"] = platform.machine()
    out["nproc"] = str(os.cpu_count() or 0)
    out["video"] = "\n".join(sorted("/dev/" + p.name for p in (base / "dev").glob("video*")))
    out["cuda"] = "\n".join(p for p in GPU_NODES if (base / p.lstrip("/")).exists())
    libc = platform.libc_ver()
    out["libc"] = f"ldd ({libc[0]}) {libc[1]}" if libc[0] else ""
    where = Path(disk_path or Path.home())
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    out["df"] = f"- {usage.total // 1024} {usage.used // 1024} {usage.free // 1024} - {where}"
    out["python"] = f"{sys.executable} {'.'.join(map(str, sys.version_info[:3]))}"
    return out


# ARM's "CPU part" numbers of the cores edge boards use (/proc/cpuinfo, implementer 0x41)
CPU_PARTS = {"0xd03": "cortex-a53", "0xd04": "cortex-a35", "0xd05": "cortex-a55", "0xd07": "cortex-a57",
             "0xd08": "cortex-a72", "0xd09": "cortex-a73", "0xd0a": "cortex-a75", "0xd0b": "cortex-a76",
             "0xd42": "cortex-a78ae", "0xd41": "cortex-a78"}


@dataclass
class BoardFacts:
    """A board as far as choosing a profile and installing the agent go."""

    arch: str = ""
    model: str = ""                  # device-tree model, e.g. "Raspberry Pi 4 Model B Rev 1.4"
    cpu: str = ""                    # core name (cortex-a72) or x86 model name
    cores: int = 0
    memory_mb: int = 0
    disk_free_mb: int | None = None  # None: df not readable (0 is a full disk, not an unknown one)
    os: str = ""                     # PRETTY_NAME
    l4t: str = ""                    # "R36.3.0" from /etc/nv_tegra_release
    jetpack: str = ""                # JetPack major guessed from L4T
    cpu_features: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    cuda: bool = False
    glibc: str = ""                  # "2.36"
    python: str = ""                 # path of the best interpreter found
    python_version: str = ""         # "3.11.2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def python_ok(self) -> bool:
        return bool(self.python_version) and version_tuple(self.python_version)[:2] >= MIN_PYTHON


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _kv(text: str, sep: str = ":") -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            out.setdefault(k.strip(), v.strip().strip('"'))
    return out


def _cpu(cpuinfo: str, arch: str) -> tuple[str, list[str]]:
    info = _kv(cpuinfo)
    flags = (info.get("Features") or info.get("flags") or "").split()
    part = info.get("CPU part", "").lower()
    name = CPU_PARTS.get(part) or info.get("model name") or (f"arm part {part}" if part else arch)
    return name, flags


def _l4t(tegra: str) -> tuple[str, str]:
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
    if not m:
        return "", ""
    major = int(m.group(1))
    jetpack = {36: "6", 35: "5", 34: "5", 32: "4"}.get(major, "")
    return f"R{major}.{m.group(2)}", jetpack


def _python(text: str) -> tuple[str, str]:
    best = ("", "")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and version_tuple(parts[1]) > version_tuple(best[1] or "0"):
            best = (parts[0], parts[1])
    return best


def parse_facts(sections: dict[str, str]) -> BoardFacts:
    """Turn the collected {section: text} into BoardFacts (missing sections stay empty)."""
    s = {k: v.strip() for k, v in sections.items()}
    arch = s.get("arch", "")
    cpu, flags = _cpu(s.get("cpuinfo", ""), arch)
    mem_kb = _kv(s.get("meminfo", "")).get("MemTotal", "0 kB").split()[0]
    df = s.get("df", "").split()
    l4t, jetpack = _l4t(s.get("tegra", ""))
    glibc = re.search(r"(\d+\.\d+)\s*$", s.get("libc", ""))
    py, pyv = _python(s.get("python", ""))
    cores = s.get("nproc", "0").split()
    return BoardFacts(
        arch=arch, model=s.get("model", ""), cpu=cpu,
        cores=int(cores[0]) if cores and cores[0].isdigit() else 0,
        memory_mb=int(mem_kb) // 1024 if mem_kb.isdigit() else 0,
        disk_free_mb=int(df[3]) // 1024 if len(df) > 3 and df[3].isdigit() else None,
        os=_kv(s.get("os", ""), "=").get("PRETTY_NAME", ""), l4t=l4t, jetpack=jetpack, cpu_features=flags,
        cameras=[line for line in s.get("video", "").split() if line.startswith("/dev/video")],
        cuda=bool(s.get("cuda")) or bool(l4t), glibc=glibc.group(1) if glibc else "", python=py, python_version=pyv,
    )
