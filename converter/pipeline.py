"""Run a recipe's passes over a conversion context, with progress and a report.

An explicit --format runs its recipe (converter.recipes) from start to end. --format auto runs the
recipes' shared prefix (import, clean-up) once; each candidate format then runs its own recipe up to
and including the accuracy gate, mixed-precision passes included; the candidates that pass are timed
side by side (converter.format_selection) and the fastest runs the rest of its recipe (benchmark,
self-test, package).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from device_profiles import RUNTIME_FOR_FORMAT, Profile, load_profile

from .errors import ConversionError, GateFailed
from .format_selection import candidate_record, select_fastest
from .options import ConvertOptions
from .passes import ConversionContext, check_pass_options, create_pass, declared_options
from .recipes import auto_candidates, choose_format, recipe_for, shared_prefix, split_for_candidates

log = logging.getLogger(__name__)
OnPass = Callable[[str, int, int], None]  # (pass name, index, total): called before each pass


@dataclass
class ConversionResult:
    bundle: Path | None
    format: str
    precision: str
    report: list[dict[str, Any]] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: ConversionContext) -> "ConversionResult":
        return cls(ctx.bundle_path, ctx.format, ctx.precision, ctx.report, dict(ctx.measurements))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle) if self.bundle else None,
            "format": self.format,
            "precision": self.precision,
            "measurements": self.measurements,
            "passes": self.report,
        }


def run_passes(ctx: ConversionContext, names: Sequence[str], on_pass: OnPass | None = None, prefix: str = "") -> None:
    """Run each applicable pass (by registered name) on `ctx`, appending a timed report entry per pass."""
    passes = [create_pass(n) for n in names]
    for i, p in enumerate(passes):
        if not p.applies(ctx):
            continue
        if on_pass:
            on_pass(prefix + p.name, i, len(passes))
            ctx.on_step = lambda text, name=prefix + p.name, i=i: on_pass(f"{name}: {text}", i, len(passes))
        t0 = time.perf_counter()
        try:
            entry = p.run(ctx)
        except ConversionError as exc:
            exc.failed_pass = getattr(exc, "failed_pass", None) or prefix + p.name  # the report names it
            raise
        seconds = time.perf_counter() - t0
        log.info("pass %s%s done in %.2fs", prefix, p.name, seconds)
        ctx.report.append({"pass": prefix + p.name, "seconds": round(seconds, 3), **entry})


def failure_report(exc: BaseException) -> dict[str, Any] | None:
    """A failed conversion's report: what was measured, which pass failed, why, and the exit code (as --json's error
    object). A failed import wrote only nulls, empty lists and the error text; --format auto wrote none at all.
    None when the conversion never started (a usage error)."""
    from edge_agent.errors import failure_record

    partial = getattr(exc, "partial", None)
    if partial is None:
        return None
    record = failure_record(exc)
    return {**partial.to_dict(), "failed_pass": getattr(exc, "failed_pass", None), "error": record["message"],
            "error_kind": record["error"], "exit_code": record["exit_code"]}


def convert(options: ConvertOptions, fmt: str | None = None, on_pass: OnPass | None = None) -> ConversionResult:
    """Convert `options.source` into a signed bundle for `options.profile`.

    fmt: "onnx" | "tflite" | "auto" (build the profile's formats, measure, pack the fastest that
    passes the gate) | None (onnx; tflite for Keras/SavedModel/.tflite sources).
    `on_pass(name, index, total)` is called before each pass (for progress display).
    Raises ConversionError subclasses (GateFailed, ImportFailed, DataError, ...) on failure.
    """
    check_pass_options(options.pass_options)
    profile = load_profile(options.profile)
    formats = auto_candidates(profile, options.source) if fmt == "auto" else [choose_format(profile, fmt, options.source)]
    warn_unread_options(options.pass_options, formats, options.precision or profile.precision.recipe)
    from edge_agent.bundle import load_private_key

    load_private_key(options.key)  # fail before the expensive passes, not after them
    if fmt == "auto":
        return convert_auto(options, profile, on_pass)
    chosen = formats[0]
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        ctx = ConversionContext(options=options, profile=profile, workdir=Path(tmp), format=chosen)
        try:
            run_passes(ctx, recipe_for(chosen), on_pass)
        except ConversionError as exc:
            exc.partial = ConversionResult.of(ctx)  # what was measured before the failure: the CLI writes the report
            raise
        return ConversionResult.of(ctx)


def warn_unread_options(given: dict[str, Any], formats: list[str], precision: str | None = None) -> list[str]:
    """Warn about options the user gave that no pass of these formats' recipes reads (--equalization on a TFLite
    conversion was silently ignored), or that act on other precisions than this one (--calibration-method or
    --compensation on an fp16 conversion); returns their flags."""
    known = declared_options()
    running = {name for fmt in formats for name in recipe_for(fmt)}
    unread = [n for n in given if n in known and not running & set(known[n][1])]
    for n in unread:
        log.warning("%s does nothing in a %s conversion (read by the %s pass, which it does not run)",
                    known[n][0].cli_flag(n) or n, " or ".join(formats), " / ".join(known[n][1]))
    other = [n for n in given if n in known and n not in unread and precision is not None
             and known[n][0].precisions is not None and precision not in known[n][0].precisions]
    for n in other:
        log.warning("%s does nothing at %s (it acts on %s only)", known[n][0].cli_flag(n) or n, precision,
                    " / ".join(known[n][0].precisions))
    return [known[n][0].cli_flag(n) or n for n in [*unread, *other]]


def _fork(base: ConversionContext, fmt: str, workdir: Path) -> ConversionContext:
    """A candidate's context: shares the loaded data, owns its lists, files and measurements."""
    workdir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(
        base, workdir=workdir, format=fmt, runtime=RUNTIME_FOR_FORMAT[fmt],
        inputs=list(base.inputs), outputs=list(base.outputs), measurements=dict(base.measurements),
        extra_files=dict(base.extra_files), report=list(base.report),
    )


def convert_auto(options: ConvertOptions, profile: Profile, on_pass: OnPass | None = None) -> ConversionResult:
    """Build every candidate format with its recipe up to the gate, keep those that pass, package the fastest."""
    formats = auto_candidates(profile, options.source)
    prefix = shared_prefix()
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        base = ConversionContext(options=options, profile=profile, workdir=Path(tmp), format=formats[0])
        try:
            run_passes(base, prefix, on_pass)
        except ConversionError as exc:
            exc.partial = ConversionResult.of(base)
            raise
        built: dict[str, ConversionContext] = {}
        records: dict[str, dict[str, Any]] = {}
        unbuilt: dict[str, ConversionError] = {}
        for fmt in formats:
            ctx = _fork(base, fmt, Path(tmp) / fmt)
            t0 = time.perf_counter()
            try:
                run_passes(ctx, split_for_candidates(fmt, prefix)[0], on_pass, prefix=f"{fmt}:")
            except ConversionError as exc:
                built_it = isinstance(exc, GateFailed)  # a gate failure was built; anything else was not
                records[fmt] = {"format": fmt, "precision": ctx.precision, "passed": False,
                                **({} if built_it else {"built": False}), "reason": str(exc)}
                log.warning("candidate %s %s: %s", fmt, "fails the gate" if built_it else "could not be built", exc)
                if not built_it:
                    unbuilt[fmt] = exc
                continue
            records[fmt] = candidate_record(ctx, time.perf_counter() - t0)
            built[fmt] = ctx
        passing = {f: c for f, c in built.items() if records[f]["passed"]}
        pool = passing or (built if options.force else {})
        if not pool:
            reasons = "; ".join(f"{f}: {r['reason']}" for f, r in records.items())
            refusal = (type(unbuilt[formats[0]])(f"no --format auto candidate could be built ({reasons})")
                       if len(unbuilt) == len(formats)  # no gate ran: the first candidate's own error and code
                       else GateFailed(f"no --format auto candidate passed the accuracy gate ({reasons})"))
            base.measurements["candidates"] = [records[f] for f in formats]
            refusal.partial, refusal.failed_pass = ConversionResult.of(base), "select-format"
            raise refusal
        if on_pass:
            on_pass("select-format", 0, 1)
        chosen, selection = select_fastest(pool, formats, records, base.host_threads(), options.bench_runs,
                                           options.reproducible)
        ctx = built[chosen]
        ctx.measurements["candidates"] = [records[f] for f in formats]
        ctx.measurements["format_selection"] = selection
        ctx.report.append({"pass": "select-format", "chosen": chosen, "candidates": [records[f] for f in formats]})
        run_passes(ctx, split_for_candidates(chosen, prefix)[1], on_pass)
        return ConversionResult.of(ctx)
