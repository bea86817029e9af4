"""Run a recipe's passes over a conversion context, with progress and a report."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from device_profiles import load_profile

from .options import ConvertOptions
from .passes import ConversionContext, Pass, check_pass_options
from .recipes import choose_format, recipe_for

log = logging.getLogger(__name__)


@dataclass
class ConversionResult:
    bundle: Path | None
    format: str
    precision: str
    report: list[dict[str, Any]] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle) if self.bundle else None,
            "format": self.format,
            "precision": self.precision,
            "measurements": self.measurements,
            "passes": self.report,
        }


def run_passes(ctx: ConversionContext, passes: Sequence[Pass], on_pass: Callable[[str, int, int], None] | None = None,
               prefix: str = "") -> None:
    """Run each applicable pass on `ctx`, appending a timed report entry per pass."""
    for i, p in enumerate(passes):
        if not p.applies(ctx):
            continue
        if on_pass:
            on_pass(prefix + p.name, i, len(passes))
        t0 = time.perf_counter()
        entry = p.run(ctx)
        seconds = time.perf_counter() - t0
        log.info("pass %s%s done in %.2fs", prefix, p.name, seconds)
        ctx.report.append({"pass": prefix + p.name, "seconds": round(seconds, 3), **entry})


def convert(
    options: ConvertOptions,
    fmt: str | None = None,
    on_pass: Callable[[str, int, int], None] | None = None,
) -> ConversionResult:
    """Convert `options.source` into a signed bundle for `options.profile`.

    fmt: "onnx" | "tflite" | "auto" (build the profile's formats, measure, pack the fastest that
    passes the gate) | None (onnx; tflite for Keras/SavedModel/.tflite sources).
    `on_pass(name, index, total)` is called before each pass (for progress display).
    Raises ConversionError subclasses (GateFailed, ImportFailed, DataError, ...) on failure.
    """
    check_pass_options(options.pass_options)
    profile = load_profile(options.profile)
    from edge_agent.bundle import load_private_key

    load_private_key(options.key)  # fail before the expensive passes, not after them
    if fmt == "auto":
        from .auto_format import convert_auto

        return convert_auto(options, profile, on_pass)
    chosen = choose_format(profile, fmt, options.source)
    passes = recipe_for(profile, chosen)
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        ctx = ConversionContext(options=options, profile=profile, workdir=Path(tmp), format=chosen)
        run_passes(ctx, passes, on_pass)
        return ConversionResult(ctx.bundle_path, ctx.format, ctx.precision, ctx.report, dict(ctx.measurements))
