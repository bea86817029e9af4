#!/usr/bin/env python3
"""OTA agent benchmark: block-transfer throughput vs raw paho pub/sub, and swap pause.

    PYTHONPATH=. python scripts/bench_ota.py [--mb 32] [--block-kb 128] [--bundle B.edgebundle --trust PUB]

1. Transfer: the same bytes on the same Mosquitto, side by side in one run:
   (a) raw: one paho client publishes the file in block-size QoS 1 messages, another receives;
   (b) agent protocol: edge_agent.ota.transfer.BlockDownloader requests blocks (64 in flight),
       a block server answers with encode_block frames, the downloader checks and stores them.
2. Swap pause (with --bundle): an InferenceLoop runs back-to-back inferences; a second session of
   the bundle is loaded and swapped in. Prints the normal inference gap and the max gap at the swap.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.ota.protocol import Block, BlockRequest, Topics, dumps, encode_block  # noqa: E402
from edge_agent.ota.transfer import BlockDownloader  # noqa: E402
from edge_fleet.broker import start_broker  # noqa: E402


def client(host: str, port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(0)
    ready = threading.Event()
    c.on_connect = lambda *a: ready.set()
    c.connect(host, port)
    c.loop_start()
    assert ready.wait(10)
    return c


def subscribe(c: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, 1)
    assert done.wait(10)


def raw_transfer(host: str, port: int, data: bytes, block: int) -> float:
    n = -(-len(data) // block)
    got = [0]
    finished = threading.Event()
    sub = client(host, port, "bench-raw-sub")

    def on_message(_c, _u, msg):  # noqa: ANN001
        got[0] += 1
        if got[0] == n:
            finished.set()

    sub.on_message = on_message
    subscribe(sub, "bench/raw")
    pub = client(host, port, "bench-raw-pub")
    t0 = time.perf_counter()
    for i in range(n):
        pub.publish("bench/raw", data[i * block:(i + 1) * block], qos=1)
    assert finished.wait(300), "raw transfer did not finish"
    dt = time.perf_counter() - t0
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
    return len(data) / dt / 1e6


def agent_transfer(host: str, port: int, path: Path, data: bytes, block: int, staging: Path) -> float:
    topics = Topics("bench")
    dev = "bench-dev"
    sha = hashlib.sha256(data).hexdigest()
    total = -(-len(data) // block)
    server = client(host, port, "bench-block-server")

    import queue

    requests: queue.Queue = queue.Queue()

    def serve() -> None:  # like a fleet server: answer requests off the network thread
        while (req := requests.get()) is not None:
            for i in req.blocks:
                frame = encode_block(Block(sha, i, total, data[i * block:(i + 1) * block]))
                server.publish(topics.block_data(dev), frame, qos=1)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    server.on_message = lambda _c, _u, msg: requests.put(BlockRequest.parse(msg.payload))
    subscribe(server, topics.block_request(dev))
    dev_client = client(host, port, "bench-agent")
    dl = BlockDownloader(staging, sha, len(data), block,
                         send_request=lambda r: dev_client.publish(topics.block_request(dev), dumps(r), qos=1))
    dev_client.on_message = lambda _c, _u, msg: dl.on_frame(msg.payload) if msg.topic == topics.block_data(dev) else None
    subscribe(dev_client, topics.block_data(dev))
    t0 = time.perf_counter()
    out = dl.run()
    dt = time.perf_counter() - t0
    dl.close()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    requests.put(None)
    for c in (server, dev_client):
        c.disconnect()
        c.loop_stop()
    return len(data) / dt / 1e6


def swap_pause(bundle: Path, trust: Path, seconds: float = 2.0) -> dict[str, float]:
    from edge_agent.bundle import TrustStore, verify_bundle
    from edge_agent.ota.health import load_checked
    from edge_agent.ota.live import InferenceLoop, LiveModel

    with tempfile.TemporaryDirectory() as tmp:
        vb = verify_bundle(bundle, TrustStore.from_paths([trust]), unpack_to=Path(tmp) / "b")
        d, m = vb.unpacked_to, vb.manifest
        loop = InferenceLoop(interval_s=0.0)
        s1, _ = load_checked(d, m, None, threads=1)
        loop.swap(LiveModel.from_slot("a", None, m, s1, d))
        loop.start()
        time.sleep(seconds)
        ends = np.array(list(loop.ends))
        gaps = np.diff(ends) * 1000
        s2, _ = load_checked(d, m, None, threads=1)  # loaded + health-checked before the swap
        t_swap = time.perf_counter()
        loop.swap(LiveModel.from_slot("b", None, m, s2, d))
        time.sleep(0.5)
        loop.stop()
        around = [t for t in loop.ends if t_swap - 0.05 <= t <= t_swap + 0.5]
        swap_gap = float(np.max(np.diff(around)) * 1000) if len(around) > 1 else float("nan")
        return {"normal_p50_ms": float(np.median(gaps)), "normal_p99_ms": float(np.percentile(gaps, 99)),
                "swap_max_gap_ms": swap_gap, "errors": loop.errors, "inferences": loop.inferences}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=32.0, help="payload size in MB (default 32)")
    ap.add_argument("--block-kb", type=int, default=128, help="block size in KiB (default 128)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of each (best is reported)")
    ap.add_argument("--bundle", type=Path, help="a bundle for the swap-pause measurement")
    ap.add_argument("--trust", type=Path, help="its signing public key")
    args = ap.parse_args()
    block = args.block_kb * 1024
    data = os.urandom(int(args.mb * 1e6))
    with tempfile.TemporaryDirectory() as tmp:
        b = start_broker(Path(tmp) / "mosq", prefer="mosquitto")
        try:
            raw, agent = [], []
            for r in range(args.rounds):
                raw.append(raw_transfer(b.host, b.port, data, block))
                staging = Path(tmp) / f"staging{r}"
                agent.append(agent_transfer(b.host, b.port, Path(tmp) / "payload", data, block, staging))
        finally:
            b.stop()
    print(f"transfer of {args.mb:.0f} MB in {args.block_kb} KiB blocks on {b.kind} (best of {args.rounds}):")
    print(f"  raw paho pub/sub QoS1 : {max(raw):8.1f} MB/s   (all: {', '.join(f'{x:.1f}' for x in raw)})")
    print(f"  agent block protocol  : {max(agent):8.1f} MB/s   (all: {', '.join(f'{x:.1f}' for x in agent)})")
    print(f"  ratio agent/raw       : {max(agent) / max(raw) * 100:8.1f} %   (target >= 70 %)")
    if args.bundle and args.trust:
        s = swap_pause(args.bundle, args.trust)
        print("swap pause (back-to-back inferences, 1 thread):")
        print(f"  normal gap p50 / p99  : {s['normal_p50_ms']:.3f} / {s['normal_p99_ms']:.3f} ms")
        print(f"  max gap at the swap   : {s['swap_max_gap_ms']:.3f} ms   errors {s['errors']} of {s['inferences']} inferences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
