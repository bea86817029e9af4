"""The agent on aarch64 under QEMU user-mode emulation: doctor, verify, run and bench real ONNX and TFLite
bundles, same labels as on x86 (scripts/arm_proof.sh; cached in .cache/arm, a few minutes the first time).
A functional proof, not a timing."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import REPO


@pytest.mark.qemu
@pytest.mark.timeout(2400)
def test_agent_on_aarch64_gives_the_x86_labels():
    r = subprocess.run(["bash", str(REPO / "scripts" / "arm_proof.sh")], cwd=REPO, capture_output=True, text=True,
                       timeout=2300)
    out = r.stdout
    assert r.returncode == 0 and "ARM PROOF: OK" in out, out[-3000:] + r.stderr[-2000:]
    assert out.count("labels equal 16/16") == 2  # ONNX and TFLite
    assert "aarch64 cortex-a72 -> raspberry-pi-4 (detected)" in out  # doctor's board detection, on arm
