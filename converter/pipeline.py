"""Run a recipe's passes over a conversion context, with progress and a report."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from device_profiles import load_profile

from .options import ConvertOptions
from .passes import ConversionContext
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


def convert(
    options: ConvertOptions,
    fmt: str = "auto",
    on_pass: Callable[[str, int, int], None] | None = None,
) -> ConversionResult:
    """Convert `options.source` into a signed bundle for `options.profile`.

    `on_pass(name, index, total)` is called before each pass (for progress display).
    Raises ConversionError subclasses (GateFailed, ImportFailed, DataError, ...) on failure.
    """
    profile = load_profile(options.profile)
    chosen = choose_format(profile, fmt)
    passes = recipe_for(profile, chosen)
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        ctx = ConversionContext(options=options, profile=profile, workdir=Path(tmp), format=chosen)
        for i, p in enumerate(passes):
            if not p.applies(ctx):
                continue
            if on_pass:
                on_pass(p.name, i, len(passes))
            t0 = time.perf_counter()
            entry = p.run(ctx)
            seconds = time.perf_counter() - t0
            log.info("pass %s done in %.2fs", p.name, seconds)
            ctx.report.append({"pass": p.name, "seconds": round(seconds, 3), **entry})
        measurements = {k: v for k, v in ctx.measurements.items() if not k.startswith("_")}
        return ConversionResult(ctx.bundle_path, chosen, ctx.precision, ctx.report, measurements)
