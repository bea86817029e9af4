"""Idle cost of `edge-agent serve` per profile and bundle format: RSS and CPU with no camera and no requests,
checked against the profile's `memory_budget_mb`, next to the old behaviour (the built-in loop on the
self-test inputs every 50 ms, `--infer-interval 0.05`) measured in the same run.

    python scripts/bench_idle.py [--profiles raspberry-pi-zero-2w,raspberry-pi-4] [--seconds 20]

The agent is a real subprocess with a model installed, connected to nothing (a closed broker port: it keeps
retrying, as a device whose fleet is away). CPU = (utime+stime) delta / wall time from /proc/PID/stat; RSS
from /proc/PID/status after the window. Figures are this x86 host's, not a board's; the ratio is what carries.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(bundle: Path, pub: Path, profile: str, interval: float, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgekit-idle-") as tmp:
        home = Path(tmp) / "home"
        agent = [sys.executable, "-m", "edge_agent.cli", "--home", str(home)]
        subprocess.run([*agent, "install", str(bundle), "--trust", str(pub), "--profile", profile, "--json"],
                       check=True, capture_output=True)
        proc = subprocess.Popen([*agent, "serve", "--broker", f"mqtt://127.0.0.1:{_closed_port()}", "--device-id", "idle",
                                 "--trust", str(pub), "--profile", profile, "--infer-interval", str(interval)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            time.sleep(5.0)  # start-up: imports, model load, health check
            c0, t0 = _cpu_s(proc.pid), time.monotonic()
            time.sleep(seconds)
            c1, t1 = _cpu_s(proc.pid), time.monotonic()
            rss = _rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(20)
    return {"cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 2), "rss_mb": round(rss, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="raspberry-pi-zero-2w,raspberry-pi-4")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import arm_bundles

    from device_profiles import load_profile

    rows = []
    for name in args.profiles.split(","):
        profile = load_profile(name)
        folder = REPO / ".cache" / "bundles" / name
        if arm_bundles.main(folder, name) != 0:
            return 1
        for fmt in ("onnx", "tflite"):
            if fmt not in profile.runtime.formats:
                continue
            bundle, pub = folder / f"digits-{fmt}.edgebundle", folder / "keys" / "signing.pub"
            idle = measure(bundle, pub, name, 30.0, args.seconds)
            loop = measure(bundle, pub, name, 0.05, args.seconds)
            budget = profile.limits.memory_budget_mb
            rows.append({"profile": name, "format": fmt, "idle": idle, "old_loop_50ms": loop, "memory_budget_mb": budget,
                         "within_budget": idle["rss_mb"] <= budget})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'profile':<22}{'format':<8}{'idle CPU %':>11}{'idle RSS MB':>12}{'50ms-loop CPU %':>16}"
              f"{'loop RSS MB':>12}{'budget MB':>10}  fits")
        for r in rows:
            print(f"{r['profile']:<22}{r['format']:<8}{r['idle']['cpu_percent']:>11.2f}{r['idle']['rss_mb']:>12.1f}"
                  f"{r['old_loop_50ms']['cpu_percent']:>16.2f}{r['old_loop_50ms']['rss_mb']:>12.1f}"
                  f"{r['memory_budget_mb']:>10.0f}  {'yes' if r['within_budget'] else 'NO'}")
    return 0 if all(r["within_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
