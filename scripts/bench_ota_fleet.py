#!/usr/bin/env python3
"""Fleet-side OTA benchmark (run side by side in one process, figures printed as ratios):

1. raw broker throughput: paho publish -> subscribe of the bundle's bytes in block-sized
   QoS 1 messages on a managed Mosquitto, vs the same file pulled through the block
   protocol (BlockRequest -> fleet block server -> encode_block frames -> reassembled and
   SHA-256 checked) by a simulated device (tests/fleet_sim.py);
2. convergence: N simulated agents in this process on v1, `deploy` v2 through the fleet
   server, time until the rollout has succeeded (one stage, and the default 5/25/100 stages).

The bundles are synthetic but real: signed with write_bundle and published with
publish_bundle (random payload so nothing compresses). No model runs here; the agent's swap
pause is measured by the device-side benchmark.

    PYTHONPATH=. python scripts/bench_ota_fleet.py --size-mb 16 --agents 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import Manifest, TensorSpec, TrustStore, generate_keypair, load_private_key, write_bundle  # noqa: E402
from edge_agent.ota.protocol import DEFAULT_BLOCK_SIZE, BundleRef, Topics, dumps  # noqa: E402
from edge_fleet.publish import publish_bundle  # noqa: E402
from edge_fleet.registry import Registry  # noqa: E402
from edge_fleet.rollout import desired_for, plan_rollout  # noqa: E402
from edge_fleet.server import FleetServer  # noqa: E402
from tests.fleet_sim import SimDevice  # noqa: E402

PROFILE = "raspberry-pi-4"


def make_bundle(folder: Path, key: Path, version: int, size: int) -> Path:
    """A signed bundle of `size` random payload bytes (schema-valid manifest)."""
    payload = folder / f"model-v{version}.onnx"
    with open(payload, "wb") as fh:
        left = size
        while left:
            n = min(left, 1 << 20)
            fh.write(os.urandom(n))
            left -= n
    m = Manifest(name="bench", version=version, profile=PROFILE, format="onnx", runtime="onnxruntime",
                 precision="int8-static", model_file="model.onnx",
                 inputs=[TensorSpec("x", "float32", [1, 1, 8, 8])], outputs=[TensorSpec("y", "float32", [1, 10])])
    return write_bundle(folder / f"bench-v{version}.edgebundle", m, {"model.onnx": payload}, load_private_key(key))


def raw_throughput(host: str, port: int, data: bytes, block: int) -> float:
    """Seconds to move `data` publisher -> broker -> subscriber in `block`-sized QoS 1 messages."""
    topic = "bench/raw"
    total = len(data)
    got = [0]
    done, subscribed = threading.Event(), threading.Event()

    def on_message(_c, _u, msg):
        got[0] += len(msg.payload)
        if got[0] >= total:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect(host, port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    subscribed.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.connect(host, port)
    pub.loop_start()
    t0 = time.perf_counter()
    for off in range(0, total, block):
        pub.publish(topic, data[off:off + block], qos=1)
    if not done.wait(120):
        raise RuntimeError("raw transfer did not complete")
    dt = time.perf_counter() - t0
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return dt


def protocol_transfer(server: FleetServer, rec, block: int, device_id: str = "bench-dev") -> float:
    """Seconds for one simulated device to pull the bundle through the block protocol."""
    b = server.broker
    sim = SimDevice(b.host, b.port, device_id, current=None).start()
    try:
        desired = desired_for(rec, "bench-transfer")
        desired.block_size = block
        t0 = time.perf_counter()
        server.client.publish(Topics().desired(device_id), dumps(desired), qos=1, retain=True)
        if not sim.wait_for(lambda s: s.current is not None and s.current.sha256 == rec.sha256, timeout=300):
            raise RuntimeError(f"protocol transfer did not complete (phase {sim.phase})")
        dt = time.perf_counter() - t0
        assert sim.files[rec.sha256] == rec.path.read_bytes()
        return dt
    finally:
        sim.stop()


def converge(server: FleetServer, reg: Registry, v1: BundleRef, target: str, n: int, stages: list[float],
             tag: str) -> tuple[float, int]:
    """Seconds until `n` simulated agents on v1 all run `target` through a rollout; returns (s, succeeded)."""
    b = server.broker
    sims = [SimDevice(b.host, b.port, f"{tag}-{i:03d}", current=v1).start() for i in range(n)]
    try:
        deadline = time.monotonic() + 60
        while not all((reg.device(s.id) or {}).get("profile") for s in sims):
            if time.monotonic() > deadline:
                raise RuntimeError("simulated agents did not report")
            time.sleep(0.05)
        t0 = time.perf_counter()
        plan = plan_rollout(reg, target, devices=[s.id for s in sims], stages=stages, stage_timeout=300)
        while (r := reg.rollout(plan.id)) and r["status"] in ("pending", "running"):
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        ok = sum(d["status"] == "succeeded" for d in r["devices"])
        if r["status"] != "succeeded":
            raise RuntimeError(f"rollout {plan.id} ended {r['status']}: {r['reason']}")
        return dt, ok
    finally:
        for s in sims:
            s.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=16.0, help="bundle size for the throughput test")
    p.add_argument("--converge-size-mb", type=float, default=1.0, help="bundle size for the convergence test")
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ota-fleet-") as tmp:
        t = Path(tmp)
        key, pub = generate_keypair(t / "keys")
        trust = TrustStore.from_paths([pub])
        big = make_bundle(t, key, 1, int(args.size_mb * 2**20))
        small_v2 = make_bundle(t, key, 2, int(args.converge_size_mb * 2**20))
        small_v3 = make_bundle(t, key, 3, int(args.converge_size_mb * 2**20))
        reg = Registry(t / "fleet" / "fleet.db")
        rec_big = publish_bundle(reg, big, trust)
        publish_bundle(reg, small_v2, trust)
        publish_bundle(reg, small_v3, trust)
        with FleetServer(reg, None, embedded="mosquitto", tick=0.05) as server:
            b = server.broker
            data = big.read_bytes()
            raw = min(raw_throughput(b.host, b.port, data, args.block_size) for _ in range(2))
            proto = min(protocol_transfer(server, rec_big, args.block_size, f"bench-dev-{i}") for i in range(2))
            mb = len(data) / 1e6
            out["broker"] = b.kind
            out["bundle_mb"] = round(mb, 2)
            out["block_size"] = args.block_size
            out["raw_mb_s"] = round(mb / raw, 1)
            out["protocol_mb_s"] = round(mb / proto, 1)
            out["protocol_vs_raw"] = round(raw / proto, 3)
            v1 = rec_big.ref
            one, ok1 = converge(server, reg, v1, "bench:2", args.agents, [100.0], "one")
            staged, ok2 = converge(server, reg, v1, "bench:3", args.agents, [5.0, 25.0, 100.0], "staged")
            out["agents"] = args.agents
            out["converge_bundle_mb"] = args.converge_size_mb
            out["converge_one_stage_s"] = round(one, 2)
            out["converge_staged_5_25_100_s"] = round(staged, 2)
            out["converged"] = [ok1, ok2]
        reg.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"broker: {out['broker']}  bundle {out['bundle_mb']} MB in {args.block_size // 1024} KiB blocks")
        print(f"raw paho pub/sub      : {out['raw_mb_s']:>8} MB/s")
        print(f"block protocol (fleet): {out['protocol_mb_s']:>8} MB/s  = {out['protocol_vs_raw'] * 100:.0f} % of raw")
        print(f"{args.agents} agents converge on a new {args.converge_size_mb} MB version: "
              f"{out['converge_one_stage_s']} s in one stage, {out['converge_staged_5_25_100_s']} s in 5/25/100 % stages "
              f"(succeeded {out['converged']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
