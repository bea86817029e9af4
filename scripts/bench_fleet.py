#!/usr/bin/env python3
"""Fleet scale benchmark: N simulated devices take a bundle through a staged rollout, per registry engine.

One managed Mosquitto; the fleet server in its own process (as `edge-fleet serve` runs it: FleetServer
on the registry); the simulated devices (tests/fleet_sim.py, real paho clients speaking the OTA block
protocol, each hash-checking the reassembled bundle) spread over several processes: paho's network
loop uses select(), which stops at file descriptor 1024, so one process holds at most ~300 devices
(the old `bench_ota.py --agents 500` "no CONNACK" at the 336th device).

For each engine (SQLite file; PostgreSQL: a throw-away server from tests/pg_cluster.py) and each
transport (MQTT blocks through the broker; HTTP: each device gets its own signed link to a real
nginx, tests/nginx_server.py, and downloads the bundle from there) it reports: time from deploy to every device on the new bundle and each stage's end, the fleet server's CPU
seconds and peak RSS, the broker's CPU seconds, the bundle bytes the broker delivered per second
against raw paho pub/sub on the same broker measured in the same run (one publisher, one
subscriber in another process), and registry rows and statements per device.

    .venv/bin/python scripts/bench_fleet.py [--devices 1000] [--mb 4] [--stages 1,10,100]
                                            [--engines sqlite,postgresql] [--transports mqtt,http]
                                            [--procs 4] [--json] [-v]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from bench_ota import make_bundle, raw_transfer  # noqa: E402
from single_transfer import run_single  # noqa: E402

from edge_agent.bundle import TrustStore, generate_keypair  # noqa: E402
from edge_agent.ota.protocol import DEFAULT_BLOCK_SIZE  # noqa: E402

TABLES = ("devices", "device_events", "rollouts", "rollout_devices", "latency_samples", "audit_log")
log = logging.getLogger("bench_fleet")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- child processes --------------------------------------------------------------------------


def server_process(location: str, store: str, broker_url: str, secret: str | None, ready, stop, result) -> None:
    """The fleet server as `edge-fleet serve` runs it; reports its statements, CPU and peak RSS."""
    from edge_fleet.registry import open_registry
    from edge_fleet.rollout.signed_urls import UrlSigner
    from edge_fleet.server import FleetServer

    logging.basicConfig(level=logging.WARNING)
    reg = open_registry(location, store_dir=Path(store))
    with FleetServer(reg, broker_url, tick=0.2, signer=UrlSigner(secret) if secret else None):
        ready.set()
        stop.wait()
    use = resource.getrusage(resource.RUSAGE_SELF)
    result.put({"queries": reg.queries, "cpu_s": use.ru_utime + use.ru_stime, "peak_rss_mb": use.ru_maxrss / 1024})
    reg.close()


def devices_process(host: str, port: int, ids: list[str], v1: tuple, ready, stop, result) -> None:
    """Run `ids` simulated devices on v1 until `stop`; report how many ended on a new bundle."""
    from edge_agent.ota.protocol import BundleRef
    from tests.fleet_sim import SimDevice

    logging.basicConfig(level=logging.WARNING)
    sims = []
    for dev in ids:
        sims.append(SimDevice(host, port, dev, current=BundleRef(*v1), keep_files=False).start(timeout=60))
    ready.set()
    stop.wait()
    result.put(sum(s.current is not None and s.current.sha256 != v1[2] for s in sims))
    for s in sims:
        s.stop()


# --- one engine -------------------------------------------------------------------------------


def run_engine(engine: str, transport: str, location: str, work: Path, broker, bundles: list[Path], pub: Path,
               n: int, procs: int, stages: list[float]) -> dict:
    """One rollout of bundles[1] to `n` devices on bundles[0]; over MQTT blocks or signed HTTP links (nginx)."""
    from edge_fleet.publish import publish_bundle
    from edge_fleet.registry import open_registry
    from edge_fleet.rollout import plan_rollout

    from tests.nginx_server import NginxServer

    store = work / f"store-{engine}-{transport}"
    reg = open_registry(location, store_dir=store)
    trust = TrustStore.from_paths([pub])
    v1, v2 = (publish_bundle(reg, b, trust) for b in bundles)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    result = ctx.Queue()
    ready = ctx.Event()
    children: list = []
    nginx, secret, source_url = None, None, None
    if transport == "http":  # 1,000 downloads from a web server, each device with its own signed link
        secret = os.urandom(16).hex()
        nginx = NginxServer(work / f"nginx-{engine}", store, secret).start()
        source_url = nginx.url + "/bundles/{sha256}.edgebundle"
    try:
        server = ctx.Process(target=server_process, args=(location, str(store), broker.url, secret, ready, stop,
                                                          result))
        server.start()
        children.append(server)
        if not ready.wait(60):
            raise RuntimeError("fleet server did not start")
        ids = [f"{engine[:2]}{transport[0]}-{i:04d}" for i in range(n)]
        sim_stop, sim_result, groups = ctx.Event(), ctx.Queue(), []
        for k in range(procs):
            started = ctx.Event()
            p = ctx.Process(target=devices_process, args=(broker.host, broker.port, ids[k::procs],
                                                          (v1.name, v1.version, v1.sha256), started, sim_stop, sim_result))
            p.start()
            children.append(p)
            groups.append((p, started))
        for p, started in groups:
            if not started.wait(300):
                raise RuntimeError("simulated devices did not connect")
        deadline = time.monotonic() + 300
        wanted = set(ids)
        while sum(1 for d in reg.devices() if d.profile and d.id in wanted) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("simulated devices did not report")
            time.sleep(0.5)
        log.info("%s: %d devices online; deploying", engine, n)
        broker_cpu0 = _cpu_seconds(broker.pid)
        t0 = time.perf_counter()
        plan = plan_rollout(reg, "bench:2", devices=ids, stages=stages, stage_timeout=900, source_url=source_url)
        stage_ends: list[float] = []
        last_stage = -1
        while (r := reg.rollout(plan.id)) and r.status in ("pending", "running"):
            if r.stage != last_stage and r.stage > 0:
                stage_ends.append(round(time.perf_counter() - t0, 2))
            last_stage = r.stage
            time.sleep(0.2)
        converge = time.perf_counter() - t0
        broker_cpu = _cpu_seconds(broker.pid) - broker_cpu0
        if r is None or r.status != "succeeded":
            raise RuntimeError(f"rollout ended {r and r.status}: {r and r.reason}")
        sent = [t.sent_at for t in r.targets]
        done = [t.done_at for t in r.targets]
        download_s = max(done) - min(sent)
        sim_stop.set()
        switched = sum(sim_result.get(timeout=120) for _ in groups)
        for p, _ in groups:
            p.join(60)
        stop.set()
        stats = result.get(timeout=60)
        server.join(30)
    finally:  # never leave simulated devices, a server or nginx behind
        if nginx is not None:
            nginx.stop()
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join(10)
    rows = {t: reg._query(f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}  # noqa: SLF001 - a benchmark's look
    reg.close()
    moved_mb = n * v2.size / 1e6
    return {"engine": engine, "transport": transport, "devices": n, "switched": switched, "converge_s": round(converge, 2),
            "stage_ends_s": stage_ends + [round(converge, 2)], "download_window_s": round(download_s, 2),
            "delivered_mb_s": round(moved_mb / download_s, 1), "server_cpu_s": round(stats["cpu_s"], 1),
            "server_peak_rss_mb": round(stats["peak_rss_mb"], 1), "broker_cpu_s": round(broker_cpu, 1),
            "statements_per_device": round(stats["queries"] / n, 1),
            "rows_per_device": {t: round(c / n, 2) for t, c in rows.items() if c}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000, help="simulated devices (0: only --single)")
    ap.add_argument("--mb", type=float, default=4.0, help="bundle size in MB (default 4)")
    ap.add_argument("--stages", default="1,10,100", help="cumulative percentages (default %(default)s)")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--transports", default="mqtt,http",
                    help="mqtt: blocks through the broker; http: per-device signed links to a real nginx")
    ap.add_argument("--procs", type=int, default=0, help="device processes (default: one per 250 devices)")
    ap.add_argument("--single", type=int, default=3, metavar="ROUNDS",
                    help="first, one device downloading one bundle of --single-mb: agent vs raw MQTT and HTTP, "
                    "ROUNDS alternating rounds (0: skip; default 3)")
    ap.add_argument("--single-mb", type=float, default=32.0, help="bundle size for --single (default 32)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(message)s")
    from edge_fleet.broker import start_broker

    from tests.pg_cluster import PgCluster

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the broker holds a socket per device
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    procs = args.procs or max(1, -(-args.devices // 250))
    stages = [float(s) for s in args.stages.split(",")]
    out: dict = {"devices": args.devices, "bundle_mb": args.mb, "stages": stages, "device_processes": procs,
                 "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        key, pub = generate_keypair(work / "keys")
        if args.single:
            big = make_bundle(work, key, 9, int(args.single_mb * 1e6))
            out["single"] = run_single(work, big, pub, args.single, DEFAULT_BLOCK_SIZE)
            log.info("single transfer: %s", out["single"])
        bundles = [make_bundle(work, key, v, int(args.mb * 1e6)) for v in (1, 2)]
        for engine in args.engines.split(",") if args.devices else []:  # --devices 0: the single transfer only
            pg = PgCluster(Path(tempfile.mkdtemp(prefix="bench-pg-"))).start() if engine == "postgresql" else None
            try:
                for transport in args.transports.split(","):
                    # a broker per run: no retained state of the previous run's devices
                    with start_broker(work / f"broker-{engine}-{transport}", prefer="mosquitto",
                                      fallback=False) as broker:
                        data = bundles[1].read_bytes() * 8
                        raw = len(data) / raw_transfer(broker.host, broker.port, data, DEFAULT_BLOCK_SIZE) / 1e6
                        log.info("raw pub/sub: %.1f MB/s", raw)
                        location = (pg.create_database(f"fleet_{transport}") if pg
                                    else str(work / f"fleet-{transport}.db"))
                        run = run_engine(engine, transport, location, work, broker, bundles, pub, args.devices,
                                         procs, stages)
                    run["raw_pubsub_mb_s"] = round(raw, 1)
                    run["delivered_vs_raw"] = round(run["delivered_mb_s"] / raw, 2)
                    out["runs"].append(run)
                    log.info("%s/%s: %s", engine, transport, run)
            finally:
                if pg is not None:
                    pg.remove()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if "single" in out:
        s, m = out["single"], out["single"]["median_mb_s"]
        print(f"one device, one {s['mb']} MB bundle ({s['rounds']} alternating rounds, medians; {s['block_kib']} KiB blocks):")
        print(f"  MQTT: agent {m['mqtt_agent']} MB/s vs raw pub/sub {m['mqtt_raw']} MB/s = {s['mqtt_ratio']:.0%} "
              f"(raw with the agent's heap setting {m['mqtt_raw_same_heap']} MB/s: {s['mqtt_ratio_same_heap']:.0%}; "
              f"the protocol with a receiver that only counts: {m['mqtt_protocol_only']} MB/s)")
        print(f"  MQTT receipt to installed (agent: transfer + verifying + installing, the one SHA-256 pass; raw: "
              f"nothing): agent "
              f"{m['mqtt_agent_end_to_end']} MB/s = {s['mqtt_end_to_end_ratio_same_heap']:.0%} of raw with the same heap")
        print(f"  HTTP: agent {m['http_agent']} MB/s vs raw GET {m['http_raw']} MB/s = {s['http_ratio']:.0%}")
        c = s["receiver_cpu_ms_per_mb"]
        print(f"  MQTT receiving process CPU: agent {c['mqtt_agent']} ms/MB vs raw {c['mqtt_raw']} ms/MB "
              f"(same heap: {c['mqtt_raw_same_heap']} ms/MB); to installed {c['mqtt_agent_to_installed']} ms/MB; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"  reading the staged file back for its SHA-256 (what verifying did before): {s['verify_sha256_s']} s")
    print(f"{args.devices} simulated devices ({procs} processes), {args.mb} MB bundle, stages {args.stages} %")
    for r in out["runs"]:
        print(f"  {r['engine']:<10} {r['transport']:<4} converged in {r['converge_s']} s (stages end at {r['stage_ends_s']} s), "
              f"{r['switched']}/{r['devices']} switched; delivered {r['delivered_mb_s']} MB/s "
              f"({r['delivered_vs_raw']:.0%} of raw MQTT pub/sub, {r['raw_pubsub_mb_s']} MB/s); server CPU {r['server_cpu_s']} s, peak RSS "
              f"{r['server_peak_rss_mb']} MB; broker CPU {r['broker_cpu_s']} s; "
              f"{r['statements_per_device']} statements/device; rows/device {r['rows_per_device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
