"""Benchmark: the local inference endpoint vs a bare in-process runtime loop on the same model.

Packs the MobileNetV2-shaped fp32 bundle of scripts/bench_pipeline.py (3x224x224, ONNX Runtime), starts
`edge-agent serve-model BUNDLE --http 0` as its own process (as on a device), and measures side by side in
one run, for 1 and 8 concurrent clients:

  bare      threads calling session.run on the same tensor in this process (the ceiling)
  endpoint  tritonclient.http `infer` with binary tensors (KServe v2) against the server

Bare and endpoint calls alternate (call by call with one client, in `--repeats` short blocks with
several) so load from other processes hits both alike; each side's samples are pooled: requests/second
and p50/p99 latency per request, what the endpoint adds at p50 (target: at most 15 % with 1 client),
and CPU time per request of the bare loop, the server process and the client: on a loaded machine
wall-clock latency stretches with every thread hand-over, CPU time shows what the server itself costs.
Usage:

    PYTHONPATH=. python scripts/bench_serve.py [--requests 200] [--threads 1] [--repeats 10] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.bundle import TrustStore, verify_bundle  # noqa: E402
from edge_agent.runtimes import load_session  # noqa: E402
from edge_agent.telemetry.latency import summarize_ms  # noqa: E402
from edge_agent.serving.batcher import BatchPolicy  # noqa: E402
from scripts.bench_pipeline import build_bundle  # noqa: E402 - the same MobileNetV2-shaped bundle

DEFAULT_WORKERS = BatchPolicy().workers


def timed(clients: int, total: int, make_call: Callable[[], Callable[[], object]]) -> tuple[list[float], float]:
    """`clients` threads share `total` calls: (per-call latencies in ms, wall seconds)."""
    samples: list[float] = []
    lock = threading.Lock()
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    calls = [make_call() for _ in range(clients)]  # one client (connection) per thread, made before timing
    start = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        call, mine = calls[i], []
        start.wait()
        for _ in range(per[i]):
            t = time.perf_counter()
            call()
            mine.append((time.perf_counter() - t) * 1000)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - t0


class Side:
    """One side's pooled figures: latencies, wall seconds, CPU seconds of this process and of the server."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.seconds = self.own_cpu = self.server_cpu = 0.0


def measured(side: Side, server: "psutil.Process", run: Callable[[], tuple[list[float], float]]) -> None:  # noqa: F821
    own0, srv0 = time.process_time(), sum(server.cpu_times()[:2])
    ms, seconds = run()
    side.own_cpu += time.process_time() - own0
    side.server_cpu += sum(server.cpu_times()[:2]) - srv0
    side.ms += ms
    side.seconds += seconds


def one_call(call: Callable[[], object]) -> tuple[list[float], float]:
    t = time.perf_counter()
    call()
    dt = time.perf_counter() - t
    return [dt * 1000], dt


def summary(side: Side) -> dict[str, float]:
    s = summarize_ms(side.ms)
    n = len(side.ms)
    return {"rps": round(n / side.seconds, 2), "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"],
            "client_cpu_ms_per_request": round(1000 * side.own_cpu / n, 2),
            "server_cpu_ms_per_request": round(1000 * side.server_cpu / n, 2)}


def start_server(bundle: Path, pub: Path, home: Path, threads: int, workers: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "edge_agent.cli", "--home", str(home), "serve-model", str(bundle), "--trust", str(pub),
           "--http", "0", "--json", "--threads", str(threads), "--workers", str(workers), "--allow-profile-mismatch"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("bench_serve: edge-agent serve-model did not start")
    return proc, json.loads(line)["url"].removeprefix("http://")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per side and client count (default 200)")
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime intra-op threads on both sides (default 1: with more, the idle side's spinning "
                    "thread pool takes CPU from the other side whenever they alternate)")
    ap.add_argument("--repeats", type=int, default=10, help="alternating bare/endpoint blocks (default 10)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients (default 1 8)")
    ap.add_argument("--workers", type=int, default=None,
                    help="the endpoint's model threads (default: serve-model's own default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import psutil  # dev extra (tflite): CPU time of the server process
    import tritonclient.http as triton

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp)
        bundle, pub = build_bundle(folder)
        vb = verify_bundle(bundle, TrustStore.from_paths([pub]), unpack_to=folder / "unpacked")
        session = load_session(vb.unpacked_to, vb.manifest, threads=args.threads)
        x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        feeds = {"image": x}
        proc, host_port = start_server(bundle, pub, folder / "home", args.threads, args.workers or DEFAULT_WORKERS)
        try:
            def bare() -> Callable[[], object]:
                return lambda: session.run(feeds)

            def endpoint() -> Callable[[], object]:
                client = triton.InferenceServerClient(url=host_port, concurrency=1)
                inp = triton.InferInput("image", [1, 3, 224, 224], "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                out = [triton.InferRequestedOutput("logits", binary_data=True)]
                return lambda: client.infer("mobilenetv2-like", [inp], outputs=out).as_numpy("logits")

            reference = session.run(feeds)[0]
            np.testing.assert_allclose(endpoint()(), reference, rtol=1e-4, atol=1e-4)  # same model, same answer
            for make in (bare, endpoint):  # warm-up
                timed(1, 20, make)
            # bare and endpoint alternate so the load of other processes (and CPU frequency changes) falls on
            # both alike: call by call with one client, in short blocks with several; figures pooled per side
            server = psutil.Process(proc.pid)
            sides = {(c, name): Side() for c in args.clients for name in ("bare", "endpoint")}
            for r in range(args.repeats):
                for c in args.clients:
                    block = max(c, args.requests // args.repeats)
                    if c == 1:
                        calls = {"bare": bare(), "endpoint": endpoint()}
                        for _ in range(block):
                            for name, call in calls.items():
                                measured(sides[(1, name)], server, lambda call=call: one_call(call))
                        continue
                    for name, make in (("bare", bare), ("endpoint", endpoint)):
                        time.sleep(0.1)  # let the other side's spinning runtime threads park
                        measured(sides[(c, name)], server, lambda make=make: timed(c, block, make))
                if not args.json:
                    print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(20)

    report: dict[str, object] = {"model": "MobileNetV2-shaped fp32 1x3x224x224 (ONNX Runtime)", "threads": args.threads,
                                 "workers": args.workers or DEFAULT_WORKERS,
                                 "requests": args.requests, "repeats": args.repeats, "cpus": os.cpu_count(),
                                 "load_average_1m": round(os.getloadavg()[0], 1), "clients": {}}
    for c in args.clients:
        b, e = summary(sides[(c, "bare")]), summary(sides[(c, "endpoint")])
        bare_cpu = b["client_cpu_ms_per_request"]  # the bare loop's runtime runs in this process
        report["clients"][c] = {  # type: ignore[index]
            "bare": b, "endpoint": e,
            # CPU time is not stretched by other processes' load: the endpoint's own cost, next to the model's
            "server_cpu_added_pct": round(100 * (e["server_cpu_ms_per_request"] / bare_cpu - 1), 1),
            "added_p50_pct": round(100 * (e["p50_ms"] / b["p50_ms"] - 1), 1),
            "added_p50_ms": round(e["p50_ms"] - b["p50_ms"], 3),
            "rps_ratio": round(e["rps"] / b["rps"], 3),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']}, {args.threads} intra-op threads, endpoint workers {report['workers']}, "
          f"{args.requests} requests per measurement, "
          f"in {args.repeats} alternating blocks, {os.cpu_count()} CPUs, load average {report['load_average_1m']}")
    print(f"{'clients':>7} {'side':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for c, row in report["clients"].items():  # type: ignore[union-attr]
        for side in ("bare", "endpoint"):
            m = row[side]
            print(f"{c:>7} {side:<9} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}")
        print(f"{'':>7} endpoint adds {row['added_p50_pct']:+.1f} % at p50 ({row['added_p50_ms']:+.2f} ms; target <= 15 % "
              f"with 1 client), throughput {100 * row['rps_ratio']:.1f} % of bare")
        print(f"{'':>7} CPU per request: bare {row['bare']['client_cpu_ms_per_request']:.2f} ms; endpoint server "
              f"{row['endpoint']['server_cpu_ms_per_request']:.2f} ms ({row['server_cpu_added_pct']:+.1f} %) + client "
              f"{row['endpoint']['client_cpu_ms_per_request']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
