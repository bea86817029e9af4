"""Provisioning figures over real SSH (Debian's sshd on loopback, one server per simulated device):

  1. one device from nothing: `edge-device setup` into an empty folder (wheelhouse already cached on the host)
  2. N devices set up in parallel
  3. flash a ~4 MB bundle to 1 device, then to all N in parallel (push, verify, A/B install, health check, bench)

    python scripts/bench_flash.py [--devices 8] [--json]

Loopback SSH, 2-core host shared by every device's pip and agent: the figures bound the tool's own overhead,
not a real network. Each device's agent runs detached (no systemd here) and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sshd_helpers import start_sshd  # noqa: E402


def big_bundle(folder: Path) -> tuple[Path, Path]:
    """A ~4 MB int8 bundle for x86-64-cpu (an MLP on the digits with 4M weights) and its public key."""
    import torch
    from torch import nn

    from converter.cli import main as convert
    from edge_agent.bundle import generate_keypair
    from examples import digits_cnn

    out = folder / "mlp-4mb.edgebundle"
    key, pub = generate_keypair(folder / "keys")
    x_train, y_train, x_test, y_test = digits_cnn.load_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                          nn.Linear(2048, 10))
    model = digits_cnn.fit(model, x_train, y_train, epochs=2, lr=1e-3)
    onnx = digits_cnn.export_onnx(model, folder / "mlp.onnx")
    calib = digits_cnn.save_data(folder / "calib.npz", x_train[:64])
    evaluation = digits_cnn.save_data(folder / "eval.npz", x_test, y_test)
    assert convert(["--quiet", "convert", str(onnx), "--profile", "x86-64-cpu", "--calibration", str(calib), "--eval",
                    str(evaluation), "--key", str(key), "--out", str(out), "--bench-runs", "5", "--force"]) == 0
    return out, pub


def edge_device(*argv: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    env = {**os.environ, "EDGEKIT_CACHE": os.environ.get("EDGEKIT_CACHE", str(REPO / ".cache" / "edgekit"))}
    r = subprocess.run([sys.executable, "-m", "edge_device", "-q", *argv, "--json"], capture_output=True, text=True, env=env)
    return r.returncode, json.loads(r.stdout or "{}"), time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-flash-") as tmp:
        root = Path(tmp)
        bundle, pub = big_bundle(root)
        servers = [start_sshd(root / f"sshd{i}") for i in range(args.devices)]
        inv = root / "lab.toml"
        inv.write_text("".join(
            f'[[device]]\nname = "dev{i}"\nhost = "127.0.0.1"\nport = {s.port}\nuser = "root"\n'
            f'identity = "{s.identity}"\nknown_hosts = "{s.known_hosts}"\nremote_dir = "{root}/dev{i}"\n\n'
            for i, s in enumerate(servers)))
        common = ["--unit-dir", str(root / "units"), "--broker", "mqtt://127.0.0.1:1", "--trust", str(pub),
                  "--service-user", "root"]
        try:
            s0 = servers[0]
            one = [s0.target, "--identity", str(s0.identity), "--known-hosts", str(s0.known_hosts),
                   "--remote-dir", f"{root}/dev0"]
            code, out, t_one = edge_device("setup", *one, *common)
            assert code == 0, out
            code, out, t_all = edge_device("setup", "--inventory", str(inv), "--parallel", str(args.devices), *common)
            assert code == 0, out
            code, out, t_flash1 = edge_device("flash", str(bundle), *one, "--runs", "10")
            assert code == 0, out
            code, out, t_flashn = edge_device("flash", str(bundle), "--inventory", str(inv), "--parallel",
                                              str(args.devices), "--runs", "10")
            assert code == 0, out
            per_device = sorted(d["seconds"] for d in out["devices"])
        finally:
            for i in range(args.devices):
                pid = root / f"dev{i}" / "agent.pid"
                if pid.exists():
                    subprocess.run(["kill", pid.read_text().strip()], check=False)
            for s in servers:
                s.stop()
        result = {"bundle_mb": round(bundle.stat().st_size / 1e6, 2), "devices": args.devices,
                  "setup_one_from_nothing_s": round(t_one, 1), f"setup_{args.devices}_parallel_s": round(t_all, 1),
                  "flash_one_s": round(t_flash1, 1), f"flash_{args.devices}_parallel_s": round(t_flashn, 1),
                  "flash_per_device_s_min_max": [per_device[0], per_device[-1]]}
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k:32} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
