"""`--format auto`: build every format the profile allows, gate and time them on this host, pack the best.

The shared part (import, clean-up, data) runs once. Each candidate format then runs its own
quantize/convert pass and the accuracy gate. Candidates that pass are timed side by side,
interleaved in rounds with the same thread count, so a busy machine slows them alike; the
fastest (median latency; within 3 % the profile's preferred format) is self-tested and packaged. Every candidate, with its gate result
and latency, is recorded in the manifest under measurements["candidates"].
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from device_profiles import Profile

from .errors import ConversionError, GateFailed
from .options import ConvertOptions
from .passes import AccuracyGatePass, CleanupPass, ConversionContext, ImportPass, PackagePass, QuantizePass, SelfTestPass
from .passes.tflite_convert import TFLiteConvertPass
from .pipeline import ConversionResult, run_passes
from .recipes import auto_candidates
from .runners import runner

log = logging.getLogger(__name__)
ROUNDS = 10
MIN_RUNS = 50
TIE = 0.03  # relative p50 difference treated as a tie


def _fork(base: ConversionContext, fmt: str, workdir: Path) -> ConversionContext:
    """A candidate's context: shares the loaded data, owns its lists, files and measurements."""
    workdir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(
        base, workdir=workdir, format=fmt, runtime="onnxruntime" if fmt == "onnx" else "litert",
        inputs=list(base.inputs), outputs=list(base.outputs), measurements=dict(base.measurements),
        extra_files=dict(base.extra_files), report=list(base.report),
    )


SETTLE_S = 0.2  # long enough for ORT's spinning intra-op threads to park


def measure_side_by_side(ctxs: dict[str, ConversionContext], threads: int, runs: int) -> dict[str, dict[str, float]]:
    """Median and mean latency (ms) of each candidate, timed in interleaved rounds."""
    calls = {}
    for key, ctx in ctxs.items():
        run, info = runner(ctx.model, ctx.timing_feeds(), threads, ctx.inputs, ctx.outputs)
        for _ in range(3):
            run()  # warm-up
        calls[key] = (run, info)
    samples: dict[str, list[float]] = {k: [] for k in ctxs}
    per_round = max(10, runs // ROUNDS)  # enough runs per block that the first, cold ones do not set the median
    for _ in range(ROUNDS):
        for key, (run, _) in calls.items():
            # The previous runtime's worker threads keep spinning for a while after their last run
            # (ONNX Runtime's thread pool does by default) and would steal the cores from this one.
            time.sleep(SETTLE_S)
            for _ in range(3):
                run()  # untimed: wake this runtime's thread pool
            for _ in range(per_round):
                t = time.perf_counter()
                run()
                samples[key].append((time.perf_counter() - t) * 1e3)
    return {k: {"p50_ms": round(statistics.median(v), 4), "mean_ms": round(statistics.fmean(v), 4), "runs": len(v),
                **calls[k][1]} for k, v in samples.items()}


def convert_auto(options: ConvertOptions, profile: Profile,
                 on_pass: Callable[[str, int, int], None] | None = None) -> ConversionResult:
    """Build the candidates, keep those that pass the gate, package the fastest."""
    formats = auto_candidates(profile, options.source)
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        base = ConversionContext(options=options, profile=profile, workdir=Path(tmp), format=formats[0])
        run_passes(base, [ImportPass(), CleanupPass()], on_pass)
        built: dict[str, ConversionContext] = {}
        records: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            ctx = _fork(base, fmt, Path(tmp) / fmt)
            convert_pass = QuantizePass() if fmt == "onnx" else TFLiteConvertPass()
            t0 = time.perf_counter()
            try:
                run_passes(ctx, [convert_pass, AccuracyGatePass()], on_pass, prefix=f"{fmt}:")
            except GateFailed as exc:
                records[fmt] = {"format": fmt, "precision": ctx.precision, "passed": False, "reason": str(exc)}
                log.warning("candidate %s fails the gate: %s", fmt, exc)
                continue
            except ConversionError as exc:
                records[fmt] = {"format": fmt, "precision": ctx.precision, "passed": False, "built": False,
                                "reason": str(exc)}
                log.warning("candidate %s could not be built: %s", fmt, exc)
                continue
            acc = ctx.measurements.get("accuracy", {})
            records[fmt] = {
                "format": fmt, "precision": ctx.precision, "passed": bool(acc.get("passed", True)),
                "forced": bool(acc.get("forced", False)), "build_seconds": round(time.perf_counter() - t0, 3),
                "model_bytes": ctx.model.stat().st_size,
                "accuracy": {k: acc[k] for k in ("top1_agreement", "converted_top1_accuracy", "top1_drop_points",
                                                  "mean_cosine") if k in acc},
            }
            built[fmt] = ctx
        passing = {f: c for f, c in built.items() if records[f]["passed"]}
        pool = passing or (built if options.force else {})
        if not pool:
            reasons = "; ".join(f"{f}: {r['reason']}" for f, r in records.items())
            raise GateFailed(f"no --format auto candidate passed the accuracy gate ({reasons})")
        threads = base.host_threads()
        if on_pass:
            on_pass("select-format", 0, 1)
        timings = measure_side_by_side(pool, threads, max(options.bench_runs, MIN_RUNS))  # >= 5 per round
        for fmt, t in timings.items():
            records[fmt]["host_latency"] = t
        best = min(t["p50_ms"] for t in timings.values())
        # within TIE of the fastest the measurement cannot tell them apart: follow the profile's order
        chosen = next(f for f in formats if f in timings and timings[f]["p50_ms"] <= best * (1 + TIE))
        fastest = timings[chosen]["p50_ms"]
        for fmt, t in timings.items():
            records[fmt]["relative_to_chosen"] = round(t["p50_ms"] / fastest, 3) if fastest else None
        ctx = built[chosen]
        if options.reproducible:  # wall-clock figures stay out of a reproducible manifest
            for r in records.values():
                r.pop("host_latency", None), r.pop("build_seconds", None), r.pop("relative_to_chosen", None)
        ctx.measurements["candidates"] = [records[f] for f in formats]
        ctx.measurements["format_selection"] = {
            "mode": "auto", "chosen": chosen, "criterion": f"median host latency, {threads} threads, interleaved; within {TIE:.0%} the profile's order wins",
            "considered": formats,
        }
        ctx.report.append({"pass": "select-format", "chosen": chosen, "candidates": [records[f] for f in formats]})
        from .passes import HostBenchmarkPass

        run_passes(ctx, [HostBenchmarkPass(), SelfTestPass(), PackagePass()], on_pass)
        return ConversionResult(ctx.bundle_path, ctx.format, ctx.precision, ctx.report, dict(ctx.measurements))
