"""Board detection (device_profiles.facts/matching): real boards' files -> the profile and why; the same
parser for `edge-device probe` (shell over SSH) and `edge-agent doctor` (Python on the device)."""

from __future__ import annotations

import json
import subprocess

from device_profiles.facts import collect_local, parse_facts, probe_script, split_sections
from device_profiles.matching import match_profile

PI4_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
ORIN_TEGRA = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n"


def _facts(**sections: str):
    base = {"arch": "aarch64", "meminfo": "MemTotal:        3884748 kB\n", "nproc": "4", "python": "/usr/bin/python3 3.11.2"}
    return parse_facts({**base, **sections})


def test_raspberry_pi_by_device_tree_model():
    f = _facts(model="Raspberry Pi 4 Model B Rev 1.4", cpuinfo=PI4_CPUINFO, video="/dev/video0\n/dev/video10\n")
    m = match_profile(f)
    assert m.profile == "raspberry-pi-4" and "model" in m.reason
    assert f.cpu == "cortex-a72" and "asimd" in f.cpu_features and f.cameras == ["/dev/video0", "/dev/video10"]
    assert m.line(f) == "aarch64 cortex-a72 -> raspberry-pi-4 (detected)"


def test_jetson_by_l4t_release_gives_jetpack():
    f = _facts(tegra=ORIN_TEGRA, meminfo="MemTotal: 7802000 kB\n", python="/usr/bin/python3.10 3.10.12")
    assert (f.l4t, f.jetpack, f.cuda) == ("R36.3.0", "6", True)
    assert match_profile(f).profile == "jetson-orin-nano"
    assert f.python_ok  # 3.10 is enough for the agent (JetPack 6)


def test_pi_without_device_tree_falls_back_to_the_cpu_core():
    assert match_profile(_facts(cpuinfo=PI4_CPUINFO)).profile == "raspberry-pi-4"


def test_no_profile_fits_says_why():
    f = parse_facts({"arch": "riscv64", "cpuinfo": "isa\t: rv64imafdc\n", "meminfo": "MemTotal: 1000000 kB\n"})
    m = match_profile(f)
    assert m.profile is None and "riscv64" in m.reason and "--profile" in m.reason


def test_too_little_memory_for_the_profile_fits_nothing():
    f = _facts(model="Raspberry Pi Zero 2 W Rev 1.0", meminfo="MemTotal: 120000 kB\n")
    m = match_profile(f)
    assert m.profile is None and "below raspberry-pi-zero-2w's budget" in m.reason


def test_python_too_old_or_missing():
    assert not _facts(python="/usr/bin/python3 3.9.2").python_ok
    assert not _facts(python="").python_ok
    assert _facts(python="/usr/bin/python3.9 3.9.2\n/usr/bin/python3.11 3.11.2").python == "/usr/bin/python3.11"


def test_shell_probe_and_python_doctor_agree_here():
    shell = parse_facts(split_sections(subprocess.run(["sh", "-c", probe_script()], capture_output=True,
                                                      text=True, check=True).stdout))
    local = parse_facts(collect_local())
    for field in ("arch", "cpu", "cores", "memory_mb", "os", "cameras", "cpu_features", "glibc"):
        assert getattr(shell, field) == getattr(local, field), field
    assert match_profile(shell) == match_profile(local)


def test_edge_agent_doctor(tmp_path, capsys):
    from edge_agent.cli import main

    assert main(["--home", str(tmp_path), "doctor", "--save", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "x86-64-cpu" and out["saved"]
    assert (tmp_path / "profile").read_text().strip() == "x86-64-cpu"
