"""One device, one bundle: the agent's download against the raw bound, side by side (scripts/bench_fleet.py --single).

Each round moves the same bytes six ways, alternating, receivers in their own processes:

* MQTT raw: a paho client publishes the file in block-sized QoS 1 messages, a stock paho subscriber writes
  each one at its offset into a file (a downloader must store what it gets; until 2026-12-01 it only
  counted the bytes, while the agent wrote them);
* MQTT raw, same heap: the same, with the agent's malloc setting (edge_agent.ota.heap), which alone takes
  stock paho's receiving CPU from about 3 to about 1 ms per MB: the bound for the agent's protocol on the
  agent's own process settings;
* MQTT protocol only: a receiver asks the fleet server for every block as the agent does and only counts the
  frames: the bound of the block protocol and the fleet's sending, without the agent's work per byte;
* MQTT agent: the fleet server's block server answers the real agent downloader (BlockDownloader, wired
  as the daemon wires it: block hashes from the deployment, sparse staging file, persisted block list);
* HTTP raw: urllib copies the signed link from a real nginx into a file (shutil.copyfileobj);
* HTTP agent: the agent's http_download (Range-resumable staging file) on the same link.

"Transfer" ends when the file is in the staging folder (each frame checked cheaply, nothing hashed: like raw,
which stores the bytes unchecked). "Receipt to installed" (`mqtt_agent_end_to_end`) adds the agent's real
verifying and installing phases (install_staged): signature and manifest, then every member hashed against the
signed manifest while it is unpacked into a slot, the device's one SHA-256 pass since branch xfer5 (before
it, the downloader hashed the whole file and verifying hashed every member as well: three passes). Raw pub/sub
checks and installs nothing, so that ratio is the price of a verified install, not of the protocol. Reading the
file back to hash it is timed apart. The receiving process's CPU time per MB (user + system) is given for
MQTT too: on a machine busy with other work the wall-clock figures vary by tens of percent between
rounds, CPU time much less.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_ota import _run_child, protocol_only_transfer, protocol_transfer, raw_transfer


def _verify_seconds(path: Path) -> float:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return time.perf_counter() - t0


def install_staged(path: Path, home: Path, sha: str, size: int, block: int, pub: str, signature: dict, name: str,
                   version: int) -> bool:
    """What the agent does with a staged MQTT download: its verifying and installing phases (the real states) into
    a slot under `home`; whether both ended DONE."""
    from edge_agent.bundle import TrustStore
    from edge_agent.home import AgentHome
    from edge_agent.ota.job import UpdateJob
    from edge_agent.ota.phases import Event, Phase
    from edge_agent.ota.protocol import BundleRef, DesiredState
    from edge_agent.ota.states import STATES, InstallContext

    desired = DesiredState(deployment_id=f"bench-{sha[:8]}", bundle=BundleRef(name, version, sha), size=size,
                           profile="raspberry-pi-4", signature=signature, block_size=block)
    job = UpdateJob.for_desired(desired)
    job.staged = str(path)
    ctx = InstallContext(home=AgentHome(home), trust=TrustStore.from_paths([Path(pub)]), profile_name="raspberry-pi-4",
                         latency_budget_ms=None, job=job, fetch=lambda ctx: path)
    return STATES[Phase.VERIFYING].run(ctx) is Event.DONE and STATES[Phase.INSTALLING].run(ctx) is Event.DONE


def http_receiver(url: str, size: int, staging: str, agent: bool, ready, go, result) -> None:
    """Raw: copy `url` into a file (shutil.copyfileobj, 1 MiB reads); agent: http_download into staging (with
    a progress callback, as the daemon passes one). Both write the file: the raw figure is a downloader's
    bound, not a socket's. Seconds from `go`."""
    from edge_agent.ota.http_fetch import http_download

    Path(staging).mkdir(parents=True, exist_ok=True)
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    if agent:
        path = http_download(url, Path(staging), "0" * 64, size, progress=lambda fraction: None)
    else:
        path = Path(staging) / "raw.part"
        with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as fh:
            shutil.copyfileobj(resp, fh, 1 << 20)
    seconds = time.perf_counter() - t0 if path.stat().st_size == size else None
    path.unlink()  # its dirty pages go with it, not into the next transfer's writeback
    result.put(seconds)


def single_transfer(server, rec, url: str, rounds: int, block: int, pub: Path) -> dict:
    """Alternating rounds of the six transfers; medians of MB/s, the agent/raw ratios, verify seconds."""
    from edge_agent.bundle.archive import read_signature_doc

    install = (str(pub), read_signature_doc(Path(rec.path)), rec.ref.name, rec.ref.version)
    mb = rec.size / 1e6
    data = Path(rec.path).read_bytes()
    b = server.broker
    runs: dict[str, list[float]] = {"mqtt_raw": [], "mqtt_raw_same_heap": [], "mqtt_protocol_only": [],
                                    "mqtt_agent": [], "mqtt_agent_end_to_end": [], "http_raw": [], "http_agent": []}
    verify: list[float] = []
    cpu: dict[str, list[float]] = {"mqtt_raw": [], "mqtt_raw_same_heap": [], "mqtt_agent": [],
                                   "mqtt_agent_to_installed": []}
    with tempfile.TemporaryDirectory(prefix="bench-single-") as tmp:
        for r in range(rounds):
            runs["mqtt_raw"].append(mb / raw_transfer(b.host, b.port, data, block, cpu["mqtt_raw"], Path(tmp)))
            runs["mqtt_raw_same_heap"].append(mb / raw_transfer(b.host, b.port, data, block, cpu["mqtt_raw_same_heap"],
                                                                Path(tmp), keep_heap=True))
            runs["mqtt_protocol_only"].append(mb / protocol_only_transfer(server, rec, block, f"count-{r}"))
            staging = Path(tmp) / f"mqtt-{r}"
            transfer_s: list[float] = []
            runs["mqtt_agent_end_to_end"].append(mb / protocol_transfer(
                server, rec, block, staging, f"single-{r}", install=install, cpu=cpu["mqtt_agent"],
                transfer_s=transfer_s, cpu_installed=cpu["mqtt_agent_to_installed"]))
            runs["mqtt_agent"].append(mb / transfer_s[0])
            verify.append(_verify_seconds(staging / f"{rec.sha256}.part"))
            shutil.rmtree(staging)
            runs["http_raw"].append(mb / _run_child(http_receiver, (url, rec.size, str(Path(tmp) / f"raw-{r}"),
                                                                    False)))
            runs["http_agent"].append(mb / _run_child(http_receiver, (url, rec.size, str(Path(tmp) / f"http-{r}"),
                                                                      True)))
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    return {"mb": round(mb, 2), "rounds": rounds, "block_kib": block // 1024, "median_mb_s": med,
            "all_mb_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
            "mqtt_ratio": round(statistics.median(a / r for a, r in zip(runs["mqtt_agent"], runs["mqtt_raw"])), 2),
            "mqtt_ratio_same_heap": round(statistics.median(
                a / r for a, r in zip(runs["mqtt_agent"], runs["mqtt_raw_same_heap"])), 2),
            "mqtt_end_to_end_ratio_same_heap": round(statistics.median(
                a / r for a, r in zip(runs["mqtt_agent_end_to_end"], runs["mqtt_raw_same_heap"])), 2),
            "http_ratio": round(statistics.median(a / r for a, r in zip(runs["http_agent"], runs["http_raw"])), 2),
            "verify_sha256_s": round(statistics.median(verify), 3),
            "receiver_cpu_ms_per_mb": {k: round(statistics.median(v) * 1000 / mb, 2) for k, v in cpu.items()}}


__all__ = ["single_transfer"]


def run_single(work: Path, bundle: Path, pub: Path, rounds: int, block: int) -> dict:
    """A managed Mosquitto, the fleet server on it, a real nginx with signed links; then single_transfer()."""
    from edge_agent.bundle import TrustStore
    from edge_fleet.broker import start_broker
    from edge_fleet.publish import publish_bundle
    from edge_fleet.registry import open_registry
    from edge_fleet.rollout.signed_urls import UrlSigner
    from edge_fleet.server import FleetServer

    from tests.nginx_server import NginxServer

    store = work / "single-store"
    reg = open_registry(work / "single.db", store_dir=store)
    rec = publish_bundle(reg, bundle, TrustStore.from_paths([pub]))
    secret = os.urandom(16).hex()
    nginx = NginxServer(work / "single-nginx", store, secret).start()
    try:
        with start_broker(work / "single-broker", prefer="mosquitto", fallback=False) as broker, \
                FleetServer(reg, broker.url, tick=0.2) as server:
            url = UrlSigner(secret).sign(f"{nginx.url}/bundles/{rec.sha256}.edgebundle", "single", time.time(), 3600)
            return {"broker": broker.kind, **single_transfer(server, rec, url, rounds, block, pub)}
    finally:
        nginx.stop()
        reg.close()
