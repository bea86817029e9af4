"""`edge-agent bench`: load a bundle, warm up, time runs, report the usual statistics."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Manifest
from .runtimes import ModelSession, load_session
from .sizes import human_size
from .telemetry.latency import summarize_ms


@dataclass
class BenchReport:
    model: str
    version: int
    precision: str
    runtime: str
    runtime_version: str
    provider: str
    threads: int
    warmup_runs: int
    runs: int
    init_ms: float
    first_inference_ms: float
    latency: dict[str, float]
    throughput_per_s: float
    peak_rss_mb: float
    model_size_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_feeds(manifest: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the model's shapes (symbolic dims become 1) in the bundle's dtype."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in manifest.inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        dtype = np.float32 if spec.dtype in ("int8", "uint8") else np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def time_runs(
    run: Callable[[], object], runs: int, warmup: int, progress: Callable[[int], None] | None = None
) -> tuple[float, list[float]]:
    """Time `warmup` then `runs` calls of `run`; returns (first call ms, per-run ms list)."""
    t0 = time.perf_counter()
    run()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, warmup - 1)):
        run()
    samples = []
    for i in range(runs):
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
        if progress:
            progress(i)
    return first, samples


def bench_bundle(
    bundle_dir: Path,
    manifest: Manifest,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchReport:
    """Benchmark an unpacked, verified bundle under its runtime."""
    t0 = time.perf_counter()
    session: ModelSession = load_session(bundle_dir, manifest, threads=threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    feeds = feeds or synthetic_feeds(manifest)
    first, samples = time_runs(lambda: session.run(feeds), runs, warmup, progress)
    stats = summarize_ms(samples)
    model_size = manifest.file_entry(manifest.model_file).size
    report = BenchReport(
        model=manifest.name,
        version=manifest.version,
        precision=manifest.precision,
        runtime=session.info.runtime,
        runtime_version=session.info.version,
        provider=session.info.provider,
        threads=session.info.threads,
        warmup_runs=warmup,
        runs=runs,
        init_ms=round(init_ms, 3),
        first_inference_ms=round(first, 3),
        latency=stats,
        throughput_per_s=round(1000.0 / stats["mean_ms"], 2) if stats.get("mean_ms") else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        model_size_bytes=model_size,
        details=session.info.details,
    )
    session.close()
    return report


def format_report(r: BenchReport) -> str:
    """A human-readable table of a BenchReport."""
    lat = r.latency
    rows = [
        ("model", f"{r.model} v{r.version} ({r.precision})"),
        ("runtime", f"{r.runtime} {r.runtime_version} on {r.provider}, threads={r.threads or 'default'}"
                    + (f" (interpreter {r.details['interpreter']})" if r.details.get("interpreter") else "")),
        ("model size", human_size(r.model_size_bytes)),
        ("init", f"{r.init_ms:.2f} ms"),
        ("first inference", f"{r.first_inference_ms:.3f} ms"),
        ("warm-up / runs", f"{r.warmup_runs} / {r.runs}"),
        ("min / mean / std", f"{lat['min_ms']:.3f} / {lat['mean_ms']:.3f} / {lat['std_ms']:.3f} ms"),
        ("p50 / p90 / p99", f"{lat['p50_ms']:.3f} / {lat['p90_ms']:.3f} / {lat['p99_ms']:.3f} ms"),
        ("max", f"{lat['max_ms']:.3f} ms"),
        ("throughput", f"{r.throughput_per_s:.1f} inferences/s"),
        ("peak RSS", f"{r.peak_rss_mb:.1f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
