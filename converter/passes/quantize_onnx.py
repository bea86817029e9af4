"""Quantize/convert the float ONNX model per the profile's precision recipe (ONNX Runtime tools).

int8-static   QDQ, calibration data from the user, per-channel weights, method minmax/entropy/percentile/
              distribution or auto (measured choice; quantize_int8_measured)
int8-dynamic  weights int8, activations quantized at run time (quantize_dynamic)
int4-weight   MatMul/Gemm weights in 4-bit blocks (MatMulNBits), activations and Conv float (weight_only.py)
fp16          float16 weights and activations, float32 I/O (GPU profiles)
fp32          unchanged
int8-qat      (not a recipe) the model already carries QuantizeLinear/DequantizeLinear (QAT export, another
              tool): its own scales are kept, never re-quantized; see keep_prequantized
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from ..accuracy.calibration_choice import candidates, sample_warning, select_method
from ..accuracy.paired import keeps
from ..options import INT8_STATIC, PassOption
from ..errors import UsageError
from ..onnx.prequantized import describe, float_twin, is_prequantized
from ..onnx.qdq_quantizer import OrtStaticQuantizer, prepare_for_qdq, quant_type
from ..onnx.equalize import channel_maxima, equalize, find_pairs
from ..onnx.reconstruct import COMPENSATIONS, compensate
from .base import ConversionContext, Pass
from .context import OrtInt8Hand

log = logging.getLogger(__name__)
OP_SET_SLOWDOWN = 1.5  # `weighted` QDQ may be at most this much slower (tiny nets: 5x; big ones: about equal)
OP_SET_TIMING_RUNS = 10
COMPENSATION_SAMPLES = 32  # calibration inputs the layer-wise compensation fits on (Gram matrices converge fast)
COMPENSATION_CHOICES = ("auto", *COMPENSATIONS)
CALIBRATION_METHOD_OPTION = PassOption(
    str, None, "auto (try minmax, meanquantile, linearquantile, percentile 99.9/99.99/99.999, entropy, distribution; "
    "keep the best on the eval data) | minmax | entropy | distribution | percentile[:PCT] | meanquantile[:PCT] "
    "(per-input PCT quantiles averaged: light on memory) | linearquantile[:PCT] (meanquantile only where no "
    "ReLU/Clip bounds the range: linear bottlenecks, residual Adds; default 99.9) | a comma list (default: profile). "
    "TFLite int8 takes minmax (TensorFlow's), linearquantile[:PCT], a list of those or auto (minmax vs "
    "linearquantile:99.9 compared on the eval data); other methods are a usage error there",
    metavar="METHOD", check=candidates, precisions=INT8_STATIC)
COMPENSATION_OPTION = PassOption(
    str, "auto", "weight/bias compensation after rounding, fitted layer by layer on the int8 model's own "
    "inputs (calibration data): bias = empirical bias correction, weights = closed-form least-squares "
    "reconstruction + bias correction, gptq = GPTQ rounding (per-channel weights, act order) + bias correction, none; "
    "auto = measure gptq and bias against none on the eval data and keep the best (default). TFLite: gptq/bias/weights "
    "round the float weights onnx2tf gets by GPTQ + bias correction (activations float); auto measures that against none "
    "on the eval data (a second onnx2tf conversion) and keeps the better in a paired test", choices=COMPENSATION_CHOICES,
    precisions=INT8_STATIC)


def preprocess_for_quantization(ctx: ConversionContext):
    """ORT's quant_pre_process (symbolic shape inference + optimisation); fall back when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.workdir / "float.prep.onnx"
    try:
        quant_pre_process(str(ctx.float_model), str(out), skip_symbolic_shape=False)
        return out, "quant_pre_process"
    except Exception as exc:
        dynamic = any(not isinstance(d, int) or d <= 0 for t in ctx.inputs for d in t.shape)
        hint = (" The model has dynamic input dims: pin them with --input-shape (e.g. 1x3x640x640)." if dynamic else "")
        log.warning("quant_pre_process failed (%s: %s); quantizing the cleaned graph without it.%s", exc.__class__.__name__,
                    (str(exc).splitlines() or [""])[0][:160], hint)
        return ctx.float_model, "skipped"


def fold_graph(src, out):
    """Exact Conv/affine/HardSwish folds that remove re-quantization points (converter/onnx/fold_affine.py)."""
    from ..onnx.fold_affine import fold_for_quantization

    try:
        model, counts = fold_for_quantization(onnx.load(str(src)))
        if not any(counts.values()):
            return src, []
        onnx.checker.check_model(model)
        onnx.save_model(model, str(out), save_as_external_data=False)
    except Exception as exc:  # best effort: quantize the unfolded graph
        log.warning("graph folding before quantization failed (%s); quantizing without it", str(exc).splitlines()[0][:160])
        return src, []
    return out, [f"folded {n} {what.replace('_', ' ')}" for what, n in counts.items() if n]


def keep_prequantized(ctx: ConversionContext, model: onnx.ModelProto, recipe: str, explicit: bool) -> dict[str, Any]:
    """Package an already-quantized model as it is (precision int8-qat); its float twin becomes the reference.

    int8-static / fp32 (asked for, or the profile's recipe) and a profile's fp16/int8-dynamic keep the model's
    own QDQ: re-quantizing would replace trained scales with calibrated ones and round twice. An explicit
    --precision fp16 or int8-dynamic is refused: the user should convert the float model for that.
    """
    info = describe(model)
    counts = ", ".join(f"{n} {op}" for op, n in info["ops"].items())
    if explicit and recipe in ("fp16", "int8-dynamic"):
        raise UsageError(
            f"{ctx.options.source} is already quantized ({counts}); --precision {recipe} would not undo that: "
            "convert the float model for fp16/int8-dynamic, or drop --precision to keep the model's own int8")
    src = ctx.float_model
    reference = "float twin (weights dequantized, activation Q/DQ pairs -> Clip to their range: no rounding)"
    try:
        twin = ctx.workdir / "float.twin.onnx"
        tm = float_twin(model)
        onnx.checker.check_model(tm)
        onnx.save_model(tm, str(twin), save_as_external_data=False)
        ctx.float_model = twin
    except Exception as exc:  # QOperator graphs etc.: gate/benchmark compare the model with itself
        reference = f"the model itself (no float twin: {str(exc).splitlines()[0][:120]})"
        log.warning("no float reference for the pre-quantized model (%s); the accuracy gate compares it with itself",
                    str(exc).splitlines()[0][:120])
    ctx.model = src
    ctx.precision = "int8-qat"
    log.info("model is already quantized (%s): keeping its own scales, not re-quantizing (recipe %s %s)", counts,
             recipe, "asked for" if explicit else f"of profile {ctx.profile.name}")
    note = (f"already quantized ({counts}): the model's own QDQ scales are kept and it is not re-quantized "
            f"({recipe} {'asked for' if explicit else 'is the profile recipe'})")
    if ctx.calibration is not None:
        note += "; --calibration data not used (the model's ranges are kept)"
    ctx.measurements["quantization"] = {"origin": "model (pre-quantized QDQ, e.g. QAT)", **info}
    return {"recipe": "int8-qat", "requested": recipe, "note": note, "reference": reference, **info}


def quantize_int8_measured(ctx: ConversionContext, src: Path, method_spec: str, quantize_ops: str,
                           compensation: str = "none", equalization: str = "off") -> dict[str, Any]:
    """int8-static via OrtStaticQuantizer; with several candidate methods, keep the best-scoring one."""
    o, prec = ctx.options, ctx.profile.precision
    q = OrtStaticQuantizer(src, ctx.workdir, ctx.calibration, o.calibration_samples, prec.per_channel,
                           prec.activation_type, prec.weight_type, op_set=quantize_ops if quantize_ops != "auto" else "all")
    if ctx.pixel_input is not None:  # grey levels on the uint8 grid itself (fold-input): scale 1, nothing calibrated
        q.exact_grid = list(ctx.pixel_input.pixel_tensors)
        q.stem = (ctx.pixel_input.pixel_tensors[-1], list(ctx.pixel_input.fill))
    entry: dict[str, Any] = {"calibration_samples": min(len(ctx.calibration), o.calibration_samples)}
    if ctx.task() == "detection":
        from ..detection.head import onnx_head_nodes

        q.keep_float = onnx_head_nodes(src)
        entry["float_head"] = {"nodes": len(q.keep_float), "why": "box decode and class scores keep float precision "
                               "(one int8 scale for pixels and probabilities rounds the scores away)"}
    methods = candidates(method_spec)
    q, entry["equalization"] = choose_equalization(ctx, q, methods[0], equalization)
    n = min(len(ctx.calibration), o.calibration_samples)
    warning = sample_warning(methods, n)
    if warning:
        log.warning(warning)
    data, _ = ctx.gate_data()
    if warning:
        entry["calibration_warning"] = warning
    if len(methods) > 1 and data is None:
        log.warning("--calibration-method %s needs eval data to compare methods; using %s", method_spec, prec.calibration_method)
        methods = [prec.calibration_method]
    if len(methods) == 1:
        ctx.model = q.quantize(methods[0], dst=ctx.workdir / "model.int8.onnx")
        chosen, table = methods[0], None
    else:
        evaluate = ctx.evaluator()
        sel = select_method(methods, q.quantize, evaluate)
        ctx.model, chosen, table = sel.model, sel.method, sel.table
        ctx.measurements["calibration_search"] = {"chosen": chosen, "task": evaluate.task, "samples": len(data),
                                                   "candidates": table}
    if quantize_ops == "auto" and data is not None:
        entry["op_set_search"] = choose_op_set(ctx, q, chosen)
    entry["quantize_ops"] = q.op_set
    q, entry["compensation"] = choose_compensation(ctx, q, chosen, compensation)
    ctx.ort_int8 = OrtInt8Hand(q, chosen)
    entry.update(calibration_method=chosen, calibration_candidates=table)
    return entry


def choose_equalization(ctx: ConversionContext, q: OrtStaticQuantizer, method: str, spec: str
                         ) -> tuple[OrtStaticQuantizer, dict[str, Any]]:
    """Cross-layer equalization of the float graph before calibration (converter/onnx/equalize.py). `auto`
    quantizes the plain and the equalized graph with `method` and keeps the equalized one only when a paired test
    on the same eval inputs says it agrees better with float (converter/accuracy/paired.py; in dense convs the
    scaling moves rounding error into the weights, and a win by a sample or two did not hold on held-out data)."""
    data, _ = ctx.gate_data()
    if spec == "off" or (spec == "auto" and data is None):
        return q, {"chosen": "off", "note": "not measured (no eval data)" if spec == "auto" else "off"}
    model = onnx.load(str(q.src))
    pairs = find_pairs(model)
    if not pairs:
        return q, {"chosen": "off", "pairs": 0, "note": "no Conv -> [ReLU] -> Conv pair to equalize"}
    samples = ctx.calibration.head(min(ctx.options.calibration_samples, len(ctx.calibration)))
    model, rep = equalize(model, channel_maxima(q.src, pairs, samples, ctx.workdir))
    entry: dict[str, Any] = {"chosen": "off", "samples": len(samples), **rep.to_dict()}
    workdir = q.workdir / "equalized"
    workdir.mkdir(exist_ok=True)
    src = workdir / "float.equalized.onnx"
    onnx.save_model(model, str(src), save_as_external_data=False)
    q2 = q.on_source(src, workdir)
    if spec == "on":
        return q2, {**entry, "chosen": "on"}
    evaluate = ctx.evaluator()
    plain, equal = evaluate(q.quantize(method)), evaluate(q2.quantize(method))
    entry["candidates"] = [{"equalization": "off", "agreement": plain["agreement"], "error": plain["error"]},
                           {"equalization": "on", "agreement": equal["agreement"], "error": equal["error"]}]
    log.info("cross-layer equalization: agreement %.4f -> %.4f with %s", plain["agreement"], equal["agreement"], method)
    kept, entry["paired_test"] = keeps(plain, equal)  # on only when it wins on the same inputs, not by a sample or two
    return (q2, {**entry, "chosen": "on"}) if kept else (q, entry)


def choose_compensation(ctx: ConversionContext, q: OrtStaticQuantizer, method: str, spec: str
                        ) -> tuple[OrtStaticQuantizer, dict[str, Any]]:
    """Weight/bias compensation after rounding (converter/onnx/reconstruct.py), measured: `auto` tries
    GPTQ rounding + bias correction (per-channel weights) and bias correction alone against plain rounding on
    the eval data and keeps the best only when it agrees better with float in a paired test on the same inputs
    (converter/accuracy/paired.py). The kept float model becomes the quantizer's source, so the mixed-precision
    search that follows builds on the compensated weights."""
    data, _ = ctx.gate_data()
    modes = (["gptq", "bias"] if q.per_channel else ["bias"]) if spec == "auto" else [spec]
    if spec == "none" or (spec == "auto" and data is None):
        return q, {"chosen": "none", "note": "not measured (no eval data)" if spec == "auto" else "off"}
    samples = ctx.calibration.head(min(COMPENSATION_SAMPLES, len(ctx.calibration)))
    evaluate = ctx.evaluator() if data is not None else None
    rows: list[dict[str, Any]] = []
    base_score = evaluate(ctx.model) if evaluate else None
    if base_score is not None:
        rows.append({"compensation": "none", "agreement": base_score["agreement"], "error": base_score["error"]})
        if spec == "auto" and base_score["agreement"] >= 1.0:
            # auto keeps a compensation only when it agrees strictly better: nothing can, so nothing is fitted
            # (the fit runs the int8 model once per layer and sample: 57 x 24 runs, 150 s, on YOLOv8n).
            return q, {"chosen": "none", "note": "not fitted: plain int8 already agrees with float on every eval sample",
                       "candidates": rows}
    best = ("none", base_score, q, ctx.model)
    for mode in modes:
        ctx.step(f"compensation {mode}: fitting each layer in turn on {len(samples)} samples (one int8 run per layer "
                 "and sample: minutes on a detector)")
        float_src, qdq, rep = compensate(q.src, ctx.model, samples, mode, ctx.workdir)
        score = evaluate(qdq) if evaluate else None
        row: dict[str, Any] = {"compensation": mode, **rep.to_dict()}
        if score is not None:
            row.update(agreement=score["agreement"], error=score["error"])
        if score is not None and spec == "auto":  # kept only when it wins a paired test on the same inputs
            better, row["paired_test"] = keeps(best[1], score)
        else:
            better = score is None or (score["agreement"], -score["error"]) > (best[1]["agreement"], -best[1]["error"])
        rows.append(row)
        if better:
            q2 = q.on_source(float_src)
            best = (mode, score, q2, qdq)
    chosen, _, q, ctx.model = best
    log.info("compensation: %s (%s)", chosen, ", ".join(f"{r['compensation']} {r.get('agreement', float('nan')):.4f}"
                                                         for r in rows))
    return q, {"chosen": chosen, "samples": len(samples), "candidates": rows}


def choose_op_set(ctx: ConversionContext, q: OrtStaticQuantizer, method: str) -> dict[str, Any]:
    """Try QDQ on weight-carrying ops only vs on every op ORT can quantize; keep `weighted` when it agrees
    better with float and is not more than OP_SET_SLOWDOWN slower (on small nets the extra Q/DQ
    transitions can cost more than int8 saves)."""
    evaluate = ctx.evaluator()
    base_model = ctx.model
    base = evaluate(base_model)
    cand_model = q.quantize(method, op_set="weighted")
    cand = evaluate(cand_model)
    row: dict[str, Any] = {"all": base, "weighted": cand, "chosen": "all"}
    # Strictly higher task agreement (not just lower error): ties keep `all` without timing anything,
    # so conversions stay reproducible unless the choice really matters.
    if cand["agreement"] > base["agreement"] and ctx.options.reproducible:
        # No wall-clock figure may decide what a --reproducible bundle contains: better agreement wins.
        row.update(chosen="weighted", note="--reproducible: chosen by agreement alone, latency not measured")
        q.op_set = "weighted"
        ctx.model = cand_model
    elif cand["agreement"] > base["agreement"]:
        measure = ctx.latency_probe(OP_SET_TIMING_RUNS)
        lat_all, lat_w = measure(base_model), measure(cand_model)
        lat_all = min(lat_all, measure(base_model))  # measured again after, so a load spike does not decide
        row.update(latency_ms={"all": lat_all, "weighted": lat_w})
        if lat_w <= OP_SET_SLOWDOWN * lat_all:
            row["chosen"] = "weighted"
            q.op_set = "weighted"
            ctx.model = cand_model
    log.info("quantized ops: %s (agreement all %.4f, weighted %.4f)", row["chosen"], base["agreement"], cand["agreement"])
    return row


class QuantizePass(Pass):
    """Quantize the float ONNX model per the profile's recipe (or --precision) with ONNX Runtime's tools."""

    name = "quantize"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {
            "calibration_method": CALIBRATION_METHOD_OPTION,
            "quantize_ops": PassOption(
                str, "auto", "int8 QDQ on every op ORT can quantize (all), only on Conv/ConvTranspose/MatMul/Gemm "
                "(weighted), or auto: measure both on the eval data, keep weighted if it agrees better and is not "
                "slower (default)", choices=("auto", "all", "weighted"), precisions=INT8_STATIC),
            "compensation": COMPENSATION_OPTION,
            "equalization": PassOption(
                str, "auto", "cross-layer equalization before calibration (Conv -> ReLU/ReLU6 -> Conv pairs: weak channels "
                "scaled up towards the tensor's range from calibration statistics, float-exact, ReLU6 kept): on, off, "
                "or auto = measure both on the eval data, keep it unless it agrees less with float (default)",
                choices=("auto", "on", "off"), precisions=INT8_STATIC),
        }

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, prec, cfg = ctx.options, ctx.profile.precision, self.config(ctx)
        recipe = o.precision or prec.recipe
        ctx.precision = recipe
        model = onnx.load(str(ctx.float_model))
        if is_prequantized(model):
            return keep_prequantized(ctx, model, recipe, explicit=o.precision is not None)
        if recipe == "fp32":
            return {"recipe": "fp32", "note": "model kept in float32"}
        if recipe == "fp16":
            from ..onnx.fp16 import PEAK_SAMPLES, to_fp16

            data, _ = ctx.gate_data()
            samples = [data.sample(i) for i in range(min(len(data), PEAK_SAMPLES))] if data is not None else []
            model, info = to_fp16(onnx.load(str(ctx.float_model)), samples)
            out = ctx.workdir / "model.fp16.onnx"
            onnx.save_model(model, str(out), save_as_external_data=False)
            ctx.model = out
            if "float32_nodes" in info:
                log.warning("fp16: %d node(s) kept float32: %s", len(info["float32_nodes"]["nodes"]),
                            info["float32_nodes"]["why"])
            return info
        if recipe == "int4-weight":
            from ..onnx.weight_only_int4 import quantize_weight_only

            out = ctx.workdir / "model.int4w.onnx"
            result = quantize_weight_only(ctx.float_model, out)
            ctx.model = out
            return {"recipe": "int4-weight", **result.to_dict()}
        if recipe == "int8-dynamic":
            from onnxruntime.quantization import quantize_dynamic

            out = ctx.workdir / "model.int8dyn.onnx"
            quantize_dynamic(str(ctx.float_model), str(out), per_channel=prec.per_channel, weight_type=quant_type("int8"))
            ctx.model = out
            return {"recipe": "int8-dynamic", "weight_type": "int8", "per_channel": prec.per_channel}
        # int8-static
        if ctx.calibration is None:
            raise UsageError(
                f"profile {ctx.profile.name} asks for int8-static, which needs calibration data: pass --calibration "
                "FILE.npz|IMAGE_FOLDER, or choose --precision fp32|fp16|int8-dynamic"
            )
        method = cfg.calibration_method or prec.calibration_method
        src, prep = preprocess_for_quantization(ctx)
        # Accuracy-aware path: cached calibration, measured method choice (mixed precision follows in its own pass).
        src, folds = fold_graph(src, ctx.workdir / "float.folded.onnx")
        src, notes = prepare_for_qdq(src, ctx.workdir / "float.qdq-ready.onnx")
        notes = folds + notes
        measured = quantize_int8_measured(ctx, src, method, cfg.quantize_ops, cfg.compensation,
                                          cfg.equalization)
        return {
            "recipe": "int8-static", "format": "QDQ", **measured,
            "per_channel": prec.per_channel, "activation_type": prec.activation_type,
            "weight_type": prec.weight_type, "pre_process": prep, "graph_changes": notes,
        }
