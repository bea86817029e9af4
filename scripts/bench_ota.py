#!/usr/bin/env python3
"""OTA benchmark, side by side in one run on one managed Mosquitto:

1. transfer throughput: the same bundle bytes moved
   (a) raw: a paho client publishes them in block-sized QoS 1 messages, a subscriber in
       another process receives them;
   (b) through the agent protocol: the real fleet server (block server) in this process, the
       real agent downloader (edge_agent.ota.transfer.BlockDownloader, as `edge-agent serve`
       wires it) in another process: requests, hash-checked frames, sparse staging file,
       persisted block list, until the file is in staging (nothing hashed: the device's one SHA-256
       pass is installing's, which scripts/bench_fleet.py --single times as "receipt to installed");
   printed as MB/s and the ratio (target >= 90 %). Sender and receiver are separate
   processes in both cases, as they are in a fleet.
2. swap pause: an inference loop runs back-to-back inferences while a new model is swapped
   in; normal gap vs the largest gap at the swap, and errors.
3. convergence: N simulated agents (tests/fleet_sim.py, one process) on v1; a rollout of v2
   through the fleet server, in one stage and in 5/25/100 % stages.

    .venv/bin/python scripts/bench_ota.py [--mb 32] [--agents 50] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import Manifest, TensorSpec, TrustStore, generate_keypair, load_private_key, write_bundle  # noqa: E402
from edge_agent.ota.protocol import DEFAULT_BLOCK_SIZE, BundleRef, Topics, dumps  # noqa: E402

PROFILE = "raspberry-pi-4"
RAW_TOPIC = "bench/raw"


def _client(host: str, port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(0)
    ready = threading.Event()
    c.on_connect = lambda *a: ready.set()
    c.connect(host, port)
    c.loop_start()
    if not ready.wait(10):
        raise RuntimeError(f"{name} could not connect")
    return c


def _subscribe(c: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos=1)
    done.wait(10)


# --- child processes --------------------------------------------------------------------------


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system, all threads)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def raw_receiver(host: str, port: int, total: int, staging: str | None, keep_heap: bool, ready, go, result) -> None:
    """Receive `total` bytes on RAW_TOPIC with stock paho; report seconds from `go` to the last byte and the CPU
    seconds. staging: write each message at its offset into a file there, as any downloader must store what it
    receives (the agent writes every block; the raw HTTP GET writes its file too); the file is deleted after.
    keep_heap: the agent's malloc setting (edge_agent.ota.heap), to compare like with like."""
    if keep_heap:
        from edge_agent.ota.heap import keep_freed_memory

        keep_freed_memory()
    got = [0]
    done = threading.Event()
    path = Path(staging) / "raw.part" if staging else None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) if path else None

    def on_message(_c, _u, msg):
        if fd is not None:
            os.pwrite(fd, msg.payload, got[0])
        got[0] += len(msg.payload)
        if got[0] >= total:
            done.set()

    c = _client(host, port, f"raw-sub-{os.getpid()}")
    c.on_message = on_message
    _subscribe(c, RAW_TOPIC)
    ready.set()
    go.wait()
    t0, cpu = time.perf_counter(), cpu_seconds()
    ok = done.wait(300)
    result.put((time.perf_counter() - t0, cpu_seconds() - cpu) if ok else None)
    c.disconnect()
    c.loop_stop()
    if fd is not None:
        os.close(fd)
        path.unlink()  # its dirty pages go with it, not into the next transfer's writeback


def agent_receiver(host: str, port: int, sha: str, size: int, block: int, staging: str, device: str,
                   digests: list[bytes] | None, window: int | None, install: tuple | None, ready, go, result) -> None:
    """The agent's downloader, wired as the daemon wires it; seconds from `go` to the file in staging and (with
    `install`: public key, signature doc, name, version) to the bundle installed in a slot by the agent's real
    verifying and installing phases (single_transfer.install_staged), CPU seconds of both. The file is also
    hashed after the clock stops: a file that is not the bundle fails the run."""
    from edge_agent.ota.daemon import paho_decode
    from edge_agent.ota.heap import keep_freed_memory
    from edge_agent.ota.transfer import BlockDownloader

    paho_decode.install()  # as the agent's make_client does
    keep_freed_memory()  # as make_client does
    topics = Topics()
    c = _client(host, port, f"agent-{device}")
    dl = BlockDownloader(Path(staging), sha, size, block,
                         send_request=lambda r: c.publish(topics.block_request(device), dumps(r), qos=1),
                         block_digests=digests,  # from the desired state, as the daemon passes them
                         **({"window": window} if window else {}))
    data_topic = topics.block_data(device)
    paho_decode.zero_copy(data_topic)  # as the agent's MqttLink.route does for its block data
    c.on_message = lambda _c, _u, msg: dl.on_frame(msg.payload) if msg.topic == data_topic else None
    _subscribe(c, data_topic)
    ready.set()
    go.wait()
    t0, cpu = time.perf_counter(), cpu_seconds()
    path = dl.run()
    transfer, cpu_transfer = time.perf_counter() - t0, cpu_seconds() - cpu
    if install is not None:
        from single_transfer import install_staged

        installed = install_staged(path, Path(staging) / "home", sha, size, block, *install)
    dt, cpu_total = time.perf_counter() - t0, cpu_seconds() - cpu
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    dl.close()
    ok = h.hexdigest() == sha and (install is None or installed)
    result.put((transfer, dt, cpu_transfer, cpu_total) if ok else None)
    c.disconnect()
    c.loop_stop()


def counting_receiver(host: str, port: int, sha: str, size: int, block: int, device: str, ready, go, result) -> None:
    """Asks the fleet for every block as the agent does (requests of 64) and only counts the frames: what the
    block protocol and the fleet's sending allow when receiving costs nothing. Seconds from `go`, CPU seconds."""
    from edge_agent.ota.block_frames import BlockRequest
    from edge_agent.ota.daemon import paho_decode
    from edge_agent.ota.heap import keep_freed_memory
    from edge_agent.ota.protocol import MAX_BLOCKS_PER_REQUEST

    paho_decode.install()
    keep_freed_memory()
    topics, count, got, done = Topics(), -(-size // block), [0], threading.Event()
    c = _client(host, port, f"agent-{device}")
    paho_decode.zero_copy(topics.block_data(device))

    def on_message(_c, _u, _msg):
        got[0] += 1
        if got[0] >= count:
            done.set()

    c.on_message = on_message
    _subscribe(c, topics.block_data(device))
    ready.set()
    go.wait()
    t0, cpu = time.perf_counter(), cpu_seconds()
    for first in range(0, count, MAX_BLOCKS_PER_REQUEST):
        blocks = list(range(first, min(count, first + MAX_BLOCKS_PER_REQUEST)))
        c.publish(topics.block_request(device), dumps(BlockRequest(sha256=sha, blocks=blocks, block_size=block)), qos=1)
    ok = done.wait(300)
    result.put((time.perf_counter() - t0, cpu_seconds() - cpu) if ok else None)
    c.disconnect()
    c.loop_stop()


def _run_child(target, args, send=None) -> float:
    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, ready, go, result))
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("receiver did not start")
    go.set()
    if send:
        send()
    seconds = result.get(timeout=300)
    proc.join(30)
    if seconds is None:
        raise RuntimeError("transfer did not complete or the file did not verify")
    return seconds


# --- measurements -----------------------------------------------------------------------------


def make_bundle(folder: Path, key: Path, version: int, size: int) -> Path:
    """A real signed bundle whose model file is `size` random bytes (nothing compresses)."""
    payload = folder / f"payload-v{version}.bin"
    payload.write_bytes(os.urandom(size))
    m = Manifest(name="bench", version=version, profile=PROFILE, format="onnx", runtime="onnxruntime",
                 precision="int8-static", model_file="model.onnx",
                 inputs=[TensorSpec("x", "float32", [1, 1, 8, 8])], outputs=[TensorSpec("y", "float32", [1, 10])])
    return write_bundle(folder / f"bench-v{version}.edgebundle", m, {"model.onnx": payload}, load_private_key(key))


def raw_transfer(host: str, port: int, data: bytes, block: int, cpu: list[float] | None = None,
                 staging: Path | None = None, keep_heap: bool = False) -> float:
    """Seconds the raw pub/sub of `data` takes; appends the receiver's CPU seconds to `cpu`. staging: the
    receiver writes the file there (raw_receiver); keep_heap: with the agent's malloc setting."""
    pub = _client(host, port, "raw-pub")

    def send():
        infos = [pub.publish(RAW_TOPIC, data[off : off + block], qos=1) for off in range(0, len(data), block)]
        for info in infos:
            info.wait_for_publish(60)

    try:
        seconds, used = _run_child(raw_receiver, (host, port, len(data), str(staging) if staging else None,
                                                  keep_heap), send)
    finally:
        pub.disconnect()
        pub.loop_stop()
    if cpu is not None:
        cpu.append(used)
    return seconds


def protocol_transfer(server, rec, block: int, staging: Path, device: str, window: int | None = None,
                      install: tuple | None = None, cpu: list[float] | None = None,
                      transfer_s: list[float] | None = None, cpu_installed: list[float] | None = None) -> float:
    """Seconds until the agent has the file or, with `install` (agent_receiver), the bundle installed; appends
    the agent's CPU seconds for the transfer to `cpu` (to the install to `cpu_installed`), the transfer's seconds
    to `transfer_s`."""
    from edge_fleet.rollout.desired import block_digests

    digests = block_digests(Path(rec.path), rec.sha256, block)  # computed when the deployment is made
    transfer, total, used, used_all = _run_child(agent_receiver, (server.broker.host, server.broker.port, rec.sha256,
                                                                  rec.size, block, str(staging), device, digests,
                                                                  window, install))
    if cpu is not None:
        cpu.append(used)
    if cpu_installed is not None:
        cpu_installed.append(used_all)
    if transfer_s is not None:
        transfer_s.append(transfer)
    return total


def protocol_only_transfer(server, rec, block: int, device: str, cpu: list[float] | None = None) -> float:
    """Seconds the fleet takes to deliver every block to a receiver that only counts them (counting_receiver)."""
    seconds, used = _run_child(counting_receiver, (server.broker.host, server.broker.port, rec.sha256, rec.size,
                                                   block, device))
    if cpu is not None:
        cpu.append(used)
    return seconds


def swap_pause(work: Path, seconds: float = 2.0) -> dict[str, float]:
    """Back-to-back inferences on the digits-sized model while a second session is swapped in."""
    from edge_agent.bundle import Manifest as M
    from edge_agent.ota.live import InferenceLoop, LiveModel
    from edge_agent.runtimes import load_session

    from examples import digits_cnn

    digits_cnn.export_onnx(digits_cnn.build().eval(), work / "swap.onnx")
    m = M(name="swap", version=1, profile=PROFILE, format="onnx", runtime="onnxruntime", precision="fp32",
          model_file="swap.onnx", inputs=[TensorSpec("image", "float32", [1, 1, 8, 8])],
          outputs=[TensorSpec("logits", "float32", [1, 10])])
    x = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    loop = InferenceLoop(source=lambda model, i: x, interval_s=0.0)
    loop.swap(LiveModel.from_slot("a", None, m, load_session(work, m, threads=1), work))
    loop.start()
    time.sleep(seconds)
    gaps = np.diff(np.array(list(loop.ends))) * 1000
    s2 = load_session(work, m, threads=1)  # loaded (and, in the agent, health-checked) before the swap
    t_swap = time.perf_counter()
    loop.swap(LiveModel.from_slot("b", None, m, s2, work))
    time.sleep(0.5)
    loop.stop()
    around = [t for t in loop.ends if t_swap - 0.05 <= t <= t_swap + 0.5]
    return {"normal_gap_p50_ms": round(float(np.median(gaps)), 4), "normal_gap_p99_ms": round(float(np.percentile(gaps, 99)), 4),
            "swap_max_gap_ms": round(float(np.max(np.diff(around)) * 1000), 4) if len(around) > 1 else None,
            "errors": loop.errors, "inferences": loop.inferences}


def converge(server, reg, v1: BundleRef, target: str, n: int, stages: list[float], tag: str) -> tuple[float, int]:
    """Seconds until `n` simulated agents on v1 all run `target` through a rollout; returns (s, succeeded)."""
    from edge_fleet.rollout import plan_rollout
    from tests.fleet_sim import SimDevice

    b = server.broker
    sims = [SimDevice(b.host, b.port, f"{tag}-{i:03d}", current=v1).start() for i in range(n)]
    try:
        deadline = time.monotonic() + 60
        while not all((d := reg.device(s.id)) is not None and d.profile for s in sims):
            if time.monotonic() > deadline:
                raise RuntimeError("simulated agents did not report")
            time.sleep(0.05)
        t0 = time.perf_counter()
        plan = plan_rollout(reg, target, devices=[s.id for s in sims], stages=stages, stage_timeout=300)
        while (r := reg.rollout(plan.id)) and r.status in ("pending", "running"):
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        if r is None or r.status != "succeeded":
            raise RuntimeError(f"rollout {plan.id} ended {r and r.status}: {r and r.reason}")
        return dt, sum(d.status == "succeeded" for d in r.devices)
    finally:
        for s in sims:
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=32.0, help="bundle size for the transfer test (default 32)")
    ap.add_argument("--block-kb", type=int, default=DEFAULT_BLOCK_SIZE // 1024, help="block size in KiB (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of raw and protocol transfer")
    ap.add_argument("--agents", type=int, default=50, help="simulated agents for the convergence test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.agents > 300:  # one process: paho's select() loop stops at file descriptor 1024 (~336 agents)
        ap.error("--agents above 300 do not fit in one process: use scripts/bench_fleet.py --devices N, "
                 "which spreads simulated devices over several processes")
    logging.basicConfig(level=logging.ERROR)
    from edge_fleet.publish import publish_bundle
    from edge_fleet.registry import open_registry
    from edge_fleet.server import FleetServer

    block = args.block_kb * 1024
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        t = Path(tmp)
        key, pub = generate_keypair(t / "keys")
        trust = TrustStore.from_paths([pub])
        big = make_bundle(t, key, 1, int(args.mb * 1e6))
        reg = open_registry(t / "fleet" / "fleet.db")
        rec = publish_bundle(reg, big, trust)
        for v in (2, 3):
            publish_bundle(reg, make_bundle(t, key, v, 1_000_000), trust)
        # anonymous: the raw-transfer baseline publishes on a topic outside the fleet's ACL; this measures transport
        with FleetServer(reg, None, embedded="mosquitto", tick=0.05, anonymous=True) as server:
            b = server.broker
            data = big.read_bytes()
            raw, proto = [], []
            for r in range(args.rounds):
                raw.append(len(data) / raw_transfer(b.host, b.port, data, block, staging=t) / 1e6)  # writes the file
                proto.append(len(data) / protocol_transfer(server, rec, block, t / f"staging{r}", f"bench-{r}") / 1e6)
            out["transfer"] = {"broker": b.kind, "mb": round(len(data) / 1e6, 2), "block_kib": args.block_kb,
                               "raw_mb_s": [round(x, 1) for x in raw], "protocol_mb_s": [round(x, 1) for x in proto],
                               "ratio_median": round(float(np.median(np.array(proto) / np.array(raw))), 3)}
            out["swap"] = swap_pause(t)
            one, ok1 = converge(server, reg, rec.ref, "bench:2", args.agents, [100.0], "one")
            staged, ok2 = converge(server, reg, rec.ref, "bench:3", args.agents, [5.0, 25.0, 100.0], "staged")
            out["converge"] = {"agents": args.agents, "bundle_mb": 1.0, "one_stage_s": round(one, 2),
                               "staged_5_25_100_s": round(staged, 2), "succeeded": [ok1, ok2]}
        reg.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    tr, sw, cv = out["transfer"], out["swap"], out["converge"]
    print(f"transfer of {tr['mb']} MB in {tr['block_kib']} KiB blocks on managed {tr['broker']} ({args.rounds} alternating rounds):")
    print(f"  raw paho pub/sub (QoS 1)  : {', '.join(f'{x:.1f}' for x in tr['raw_mb_s'])} MB/s")
    print(f"  agent block protocol      : {', '.join(f'{x:.1f}' for x in tr['protocol_mb_s'])} MB/s")
    print(f"  protocol / raw (median)   : {tr['ratio_median'] * 100:.0f} %   (target >= 90 %)")
    print(f"swap pause: normal gap p50 {sw['normal_gap_p50_ms']} ms, p99 {sw['normal_gap_p99_ms']} ms; "
          f"largest gap at the swap {sw['swap_max_gap_ms']} ms; {sw['errors']} errors in {sw['inferences']} inferences")
    print(f"convergence: {cv['agents']} agents to a new 1 MB version: {cv['one_stage_s']} s in one stage, "
          f"{cv['staged_5_25_100_s']} s in 5/25/100 % stages (succeeded {cv['succeeded']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
