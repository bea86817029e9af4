"""Host benchmark: float vs converted model latency on this machine, same runtime and threads.

For TFLite bundles the float reference is the float32 TFLite model, run by LiteRT like the candidate."""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.bench import time_runs
from edge_agent.telemetry.latency import summarize_ms

from ..options import PassOption
from ..runners import runner
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)


class HostBenchmarkPass(Pass):
    """Float vs converted latency on this host, same runtime and threads (skipped with --bench-runs 0)."""

    name = "host-benchmark"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"bench_warmup": PassOption(int, 5, "untimed runs before timing each model", flag="")}

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.options.bench_runs > 0

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, warmup = ctx.options, self.config(ctx).bench_warmup
        threads = ctx.host_threads()
        feeds = ctx.timing_feeds()
        result: dict[str, Any] = {"threads": threads, "runs": o.bench_runs, "warmup": warmup}
        models = {"float": ctx.reference_model or ctx.float_model, "converted": ctx.model}
        for label, path in models.items():
            run, info = runner(path, feeds, threads, ctx.inputs, ctx.outputs)
            _, samples = time_runs(run, o.bench_runs, warmup)
            result[label] = summarize_ms(samples)
            result.setdefault("runtime", info)
        # medians: the p50s the summary prints beside this ratio; one stall (a mean of 0.24 ms from a p50 of
        # 0.08 ms) made a faster model read as 0.18x and "slower than float"
        f, c = result["float"]["p50_ms"], result["converted"]["p50_ms"]
        result["speedup_vs_float"] = round(f / c, 3) if c else None
        if ctx.precision.startswith("int8") and c and c > f:
            result["warning"] = slower_warning(ctx.precision, f, c, ctx.format)
            log.warning(result["warning"])
        ctx.measurements["host_latency"] = result
        return result


def slower_warning(precision: str, float_ms: float, converted_ms: float, fmt: str = "onnx") -> str:
    """An int8 bundle that runs slower than float on this host deserves a look before it ships (issue 14); the
    advice names only options that act on this build (--quantize-ops and the float-layer search are ONNX
    int8-static's)."""
    if fmt == "onnx" and precision in ("int8-static", "int8-mixed"):
        advice = "try --quantize-ops weighted, fewer --max-float-layers, or --precision fp32/fp16"
    elif fmt == "onnx":
        advice = "try --precision int8-static (with --calibration) or fp32/fp16"
    else:
        advice = "try --precision fp32/fp16"
    return (f"the {precision} model is slower than float on this host (p50 {converted_ms:.3f} ms vs "
            f"{float_ms:.3f} ms): {advice}")
