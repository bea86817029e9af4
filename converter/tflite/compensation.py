"""Weight compensation for TFLite int8: the TFLite converter (behind onnx2tf) rounds the float weights it is given.

onnx2tf re-quantizes from the float ONNX model (per-channel scale = max |w| / 127, nearest rounding), so a
compensation computed on ONNX Runtime's QDQ model never reaches the TFLite file. What does reach it: float
weights that already sit on that grid. converter/onnx/weight_compensation.py GPTQ-rounds every Conv/Gemm onto the
per-channel int8 grid (each channel's largest weight at +-127 x scale, so the converter derives the same scale) and
corrects the biases, with float activations; onnx2tf then converts that model, and its nearest rounding lands on
exactly those integers. The float32 reference stays the one converted from the user's model.

Fitting instead on the inputs the int8 model sees (reconstruct.py on an ONNX Runtime QDQ model given TFLite's
ranges, as the ONNX path fits) was measured on EfficientNet-Lite0 and lost on the selection half (0.906-0.925 of
float's answers kept vs 0.953 weights-only; held out 0.917-0.932 vs 0.927): README, "Activation-aware GPTQ on TFLite".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from ..accuracy.paired import keeps
from ..passes.base import ConversionContext
from ..passes.context import TFSource

log = logging.getLogger(__name__)
SAMPLES = 32  # calibration inputs the fit uses (as the ONNX path's compensation)


def compensate_tflite(ctx: ConversionContext, spec: str, convert: Callable[[Path, Path], Any], io_dtype: str
                      ) -> dict[str, Any]:
    """`convert(float_onnx, workdir)` -> onnx2tf result. ctx.model is plain int8 on entry; with `spec` gptq (or
    bias/weights: the same weight-only fit here) it becomes the compensated int8 model; with eval data both are
    scored in the report. auto (with eval data) fits gptq and keeps it only when it wins the paired test (as the ONNX
    path's auto): a second onnx2tf conversion and a fit, ~2 min on an ImageNet CNN."""
    from ..onnx.weight_compensation import compensate_weights_only

    if spec == "auto" and ctx.task() == "detection":
        # the float decode head is set later (tflite-mixed-precision): full int8 here scores no boxes to decide on
        return {"chosen": "none", "note": "auto does not fit for detectors on TFLite (the float head comes after); "
                "--compensation gptq applies it"}
    evaluate = ctx.evaluator()
    if spec == "none" or (spec == "auto" and evaluate is None):
        return {"chosen": "none", "note": "off" if spec == "none" else "not measured (no eval data)"}
    base = evaluate(ctx.model) if evaluate is not None else None
    if spec == "auto" and base is not None and base["agreement"] >= 1.0:  # as on ONNX: nothing can agree better
        return {"chosen": "none", "note": "not fitted: plain int8 already agrees with float on every eval sample",
                "candidates": [{"compensation": "none", "agreement": base["agreement"], "error": base["error"]}]}
    samples = ctx.calibration.head(min(SAMPLES, len(ctx.calibration)))
    work = ctx.workdir / "tflite-compensation"
    try:
        src, rep = compensate_weights_only(ctx.float_model, samples, work, ctx.workdir / "float.gptq-weights.onnx")
        result = convert(src, work)
    except Exception as exc:  # noqa: BLE001 - best effort: the plain int8 model stands
        log.warning("TFLite weight compensation failed (%s); keeping plain int8", str(exc).splitlines()[0][:160])
        return {"chosen": "none", "note": f"failed: {str(exc).splitlines()[0][:160]}"}
    entry: dict[str, Any] = {"chosen": "gptq", "method": "GPTQ rounding onto the per-channel int8 grid + bias "
                             "correction, activations float (the TFLite converter rounds these weights to the same integers)",
                             **rep.to_dict()}
    if evaluate is not None and base is not None:
        cand = evaluate(result.model)
        entry["candidates"] = [{"compensation": "none", "agreement": base["agreement"], "error": base["error"]},
                               {"compensation": "gptq", "agreement": cand["agreement"], "error": cand["error"]}]
        log.info("TFLite compensation: agreement %.4f -> %.4f", base["agreement"], cand["agreement"])
        if spec == "auto":  # kept only when it wins a paired test on the same inputs, as on the ONNX path
            better, entry["paired_test"] = keeps(base, cand)
            if not better:
                return {"chosen": "none", "note": "auto: gptq measured, not better in a paired test on the eval data",
                        "candidates": entry["candidates"], "paired_test": entry["paired_test"]}
    ctx.model = result.model
    if getattr(result, "pixel_grid", None):  # GPTQ weights sit on the grid: the stem's re-centring shift is ~0 here
        entry["stem_recentred"] = {k: result.pixel_grid[k] for k in ("stem", "stem_bias_shift") if k in result.pixel_grid}
    if result.saved_model is not None:  # the mixed-precision pass re-quantizes this SavedModel (compensated weights)
        ctx.tf_source = TFSource("savedmodel", result.saved_model, io_dtype,
                                 ctx.tf_source.quantile if ctx.tf_source else None)
    return entry
