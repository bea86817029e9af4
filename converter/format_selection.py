"""`--format auto`'s choice: time the candidates that passed the gate side by side and pick the fastest.

Candidates are timed interleaved in rounds with the same thread count, so a busy machine slows them
alike; the fastest by median latency wins, and within 3 % the profile's preferred format does. Every
candidate, with its gate result and latency, is recorded for the manifest (measurements["candidates"]).
The candidates themselves are built by converter.pipeline from the shared recipes.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .passes import ConversionContext
from .runners import runner

ROUNDS = 10
MIN_RUNS = 50
TIE = 0.03  # relative p50 difference treated as a tie
SETTLE_S = 0.2  # long enough for ORT's spinning intra-op threads to park


def candidate_record(ctx: ConversionContext, build_seconds: float) -> dict[str, Any]:
    """What the manifest says about one candidate that was built and gated."""
    acc = ctx.measurements.get("accuracy", {})
    return {
        "format": ctx.format, "precision": ctx.precision, "passed": bool(acc.get("passed", True)),
        "forced": bool(acc.get("forced", False)), "build_seconds": round(build_seconds, 3),
        "model_bytes": ctx.model.stat().st_size,
        "accuracy": {k: acc[k] for k in ("top1_agreement", "converted_top1_accuracy", "top1_drop_points",
                                          "mean_cosine") if k in acc},
    }


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


def select_fastest(pool: dict[str, ConversionContext], formats: list[str], records: dict[str, dict[str, Any]],
                   threads: int, runs: int, reproducible: bool) -> tuple[str, dict[str, Any]]:
    """Time the pool, record latencies in `records`; (chosen format, the format_selection measurement).
    runs=0 (--bench-runs 0, 'skip timing') times nothing: it ran MIN_RUNS rounds anyway; the profile's order decides."""
    if runs == 0:
        chosen = next(f for f in formats if f in pool)
        return chosen, {"mode": "auto", "chosen": chosen, "considered": formats,
                        "criterion": "not timed (--bench-runs 0): the first passing format in the profile's order"}
    timings = measure_side_by_side(pool, threads, max(runs, MIN_RUNS))  # >= 5 per round
    for fmt, t in timings.items():
        records[fmt]["host_latency"] = t
    best = min(t["p50_ms"] for t in timings.values())
    # within TIE of the fastest the measurement cannot tell them apart: follow the profile's order
    chosen = next(f for f in formats if f in timings and timings[f]["p50_ms"] <= best * (1 + TIE))
    fastest = timings[chosen]["p50_ms"]
    for fmt, t in timings.items():
        records[fmt]["relative_to_chosen"] = round(t["p50_ms"] / fastest, 3) if fastest else None
    if reproducible:  # wall-clock figures stay out of a reproducible manifest
        for r in records.values():
            r.pop("host_latency", None), r.pop("build_seconds", None), r.pop("relative_to_chosen", None)
    return chosen, {
        "mode": "auto", "chosen": chosen,
        "criterion": f"median host latency, {threads} threads, interleaved; within {TIE:.0%} the profile's order wins",
        "considered": formats,
    }
