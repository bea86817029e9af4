"""Jetson boards from their files: a fake root shaped like a Jetson Nano (JetPack 4) and an Orin Nano
(JetPack 6) is read by both collectors (the shell probe `edge-device probe` runs over SSH, and Python's
`edge-agent doctor`), and the facts choose the profile, the runtime, the execution providers and whether
setup keeps JetPack's onnxruntime-gpu.

Not run on a real Jetson: the files below are copied from what L4T boards show (device-tree model with
its trailing NUL, /etc/nv_tegra_release, Ubuntu os-release, /proc/cpuinfo by ARM part number, meminfo);
`uname -m` and the Python interpreters are commands, not files, so the test gives those as text."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from device_profiles import RUNTIME_FOR_FORMAT, load_profile
from edge_agent.errors import exit_code
from device_profiles.facts import collect_local, parse_facts, probe_script, split_sections
from device_profiles.matching import match_profile
from edge_agent.runtimes.onnxruntime_runtime import choose_providers
from edge_device.probe import BOARD_ROOT_ENV
from edge_device.setup import keeps_system_onnxruntime

from .device_fixtures import edge_device, sshd  # noqa: F401 - fixture


def _cpuinfo(part: str, cores: int, model_name: str = "") -> str:
    block = (f"processor\t: {{i}}\n" + (f"model name\t: {model_name}\n" if model_name else "")
             + "BogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid\n"
             f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n")
    return "".join(block.format(i=i) for i in range(cores))


BOARDS = {
    "jetson-nano": {  # Jetson Nano Developer Kit, JetPack 4.6.1 (L4T R32.7.1), Ubuntu 18.04, Python 3.6
        "proc/device-tree/model": b"NVIDIA Jetson Nano Developer Kit\0",
        "etc/nv_tegra_release": b"# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                                b"DATE: Sat Feb 19 17:05:08 UTC 2022\n",
        "etc/os-release": b'NAME="Ubuntu"\nVERSION="18.04.6 LTS (Bionic Beaver)"\nPRETTY_NAME="Ubuntu 18.04.6 LTS"\n',
        "proc/cpuinfo": _cpuinfo("0xd07", 4, "ARMv8 Processor rev 1 (v8l)").encode(),
        "proc/meminfo": b"MemTotal:        4050048 kB\nMemFree:          2611284 kB\n",
        "dev/nvhost-ctrl-gpu": b"",  # the GPU's device node (a plain file stands in for it here)
        "dev/video0": b"",
    },
    "jetson-orin-nano": {  # Jetson Orin Nano 8 GB Developer Kit, JetPack 6.0 (L4T R36.3.0), Ubuntu 22.04, Python 3.10
        "proc/device-tree/model": b"NVIDIA Jetson Orin Nano Developer Kit\0",
        "etc/nv_tegra_release": b"# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
                                b"DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\n"
                                b"TARGET_USERSPACE_LIB_DIR=nvidia\nTARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n",
        "etc/os-release": b'NAME="Ubuntu"\nVERSION="22.04.4 LTS (Jammy Jellyfish)"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n',
        "proc/cpuinfo": _cpuinfo("0xd42", 6).encode(),
        "proc/meminfo": b"MemTotal:        7620464 kB\nMemFree:          5208312 kB\n",
    },
}
COMMANDS = {"jetson-nano": {"arch": "aarch64", "python": "/usr/bin/python3 3.6.9"},
            "jetson-orin-nano": {"arch": "aarch64", "python": "/usr/bin/python3.10 3.10.12\n/usr/bin/python3 3.10.12"}}
# what onnxruntime.get_available_providers() names in JetPack's onnxruntime-gpu wheels, and in the plain wheel
JETPACK_ORT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _fake_root(folder: Path, board: str) -> Path:
    for rel, data in BOARDS[board].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _both_collectors(root: Path, board: str):
    shell = split_sections(subprocess.run(["sh", "-c", probe_script(root=str(root))], capture_output=True, text=True,
                                          check=True).stdout)
    local = collect_local(root=root)
    return [parse_facts({**sections, **COMMANDS[board]}) for sections in (shell, local)]


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_a_jetson_root_chooses_its_profile_and_runtime(board, tmp_path):
    root = _fake_root(tmp_path / board, board)
    shell, local = _both_collectors(root, board)
    for field in ("model", "l4t", "jetpack", "cpu", "memory_mb", "os", "cameras", "cuda", "cpu_features"):
        assert getattr(shell, field) == getattr(local, field), field
    match = match_profile(local)
    assert match == match_profile(shell) and match.profile == board and "model" in match.reason
    assert local.cuda and keeps_system_onnxruntime(local)  # setup keeps JetPack's onnxruntime-gpu
    assert not keeps_system_onnxruntime(local, forced=False)

    profile = load_profile(board)
    assert RUNTIME_FOR_FORMAT[profile.runtime.formats[0]] == "onnxruntime"
    wanted = list(profile.runtime.execution_providers)
    assert choose_providers(wanted, JETPACK_ORT) == JETPACK_ORT  # TensorRT first, then CUDA, CPU last
    assert choose_providers(wanted, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(wanted, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == wanted[1:]


def test_jetpack_versions_and_python(tmp_path):
    nano = _both_collectors(_fake_root(tmp_path / "nano", "jetson-nano"), "jetson-nano")[1]
    orin = _both_collectors(_fake_root(tmp_path / "orin", "jetson-orin-nano"), "jetson-orin-nano")[1]
    assert (nano.l4t, nano.jetpack, nano.cpu, nano.cameras) == ("R32.7.1", "4", "cortex-a57", ["/dev/video0"])
    assert (orin.l4t, orin.jetpack, orin.cpu) == ("R36.3.0", "6", "cortex-a78ae")
    assert nano.model == "NVIDIA Jetson Nano Developer Kit"  # the device tree's trailing NUL is dropped
    assert orin.python_ok and orin.python == "/usr/bin/python3.10"  # JetPack 6: the agent runs on its 3.10
    assert not nano.python_ok  # JetPack 4 ships Python 3.6: setup stops with 82 until a Python >= 3.10 is there


def test_a_board_without_device_tree_model_falls_back_to_the_l4t_release(tmp_path):
    root = _fake_root(tmp_path / "orin", "jetson-orin-nano")
    (root / "proc/device-tree/model").unlink()
    facts = _both_collectors(root, "jetson-orin-nano")[1]
    match = match_profile(facts)
    assert match.profile == "jetson-orin-nano" and match.reason.startswith("l4t 'R36.3.0'")


def test_the_onnxruntime_here_falls_back_to_cpu_for_a_jetson_bundle():
    import onnxruntime as ort

    wanted = list(load_profile("jetson-orin-nano").runtime.execution_providers)
    assert choose_providers(wanted, ort.get_available_providers()) == ["CPUExecutionProvider"]


def test_edge_device_probe_reads_a_jetson_over_ssh(sshd, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The real path: the probe script over a real sshd, reading the fake Orin root (arch is this host's)."""
    monkeypatch.setenv(BOARD_ROOT_ENV, str(_fake_root(tmp_path / "orin", "jetson-orin-nano")))
    code, out = edge_device(capsys, "probe", sshd.target, *sshd.cli_args())
    row = out["devices"][0]
    assert code == 0 and row["profile"] == "jetson-orin-nano", out
    assert (row["facts"]["l4t"], row["facts"]["jetpack"], row["facts"]["cuda"]) == ("R36.3.0", "6", True)


def test_setup_on_a_board_no_profile_fits_stops_with_83(sshd, digits, tmp_path, capsys, monkeypatch):  # noqa: F811
    root = _fake_root(tmp_path / "small", "jetson-orin-nano")
    (root / "proc/meminfo").write_text("MemTotal:         3354624 kB\n")  # an Orin Nano 4 GB: below the 4096 MB budget
    monkeypatch.setenv(BOARD_ROOT_ENV, str(root))
    code, out = edge_device(capsys, "setup", sshd.target, *sshd.cli_args(), "--remote-dir", str(tmp_path / "opt"),
                            "--broker", "mqtt://127.0.0.1:1", "--trust", str(digits.pub))
    error = out["devices"][0]["error"]
    assert code == exit_code("no-profile-fits") == 83, out
    assert "below jetson-orin-nano's budget of 4096 MB" in error and "--profile jetson-orin-nano" in error
    assert not (tmp_path / "opt").exists()  # refused before anything was sent
