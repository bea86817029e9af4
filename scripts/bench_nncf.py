#!/usr/bin/env python3
"""NNCF (3.4, ONNX backend) post-training int8 vs edgekit's recipe on the real PP-OCRv4 models.

Same data as scripts/bench_accuracy.py: calibration seed 1, selection seed 2 (given to edgekit's converter
and to nncf's accuracy control as its validation set), held-out seed 3; same shapes and sizes. Every
variant quantizes the pinned float model (optionally after converter.onnx.fold_affine's exact folds).

  PYTHONPATH=. python scripts/bench_nncf.py [--models det,cls,rec] [--variants ...] [--no-ours] [--json]

Agreement is on the held-out set (converter.accuracy.metrics.score); latency = median of interleaved runs
(all variants alternating in one process, batch 1, 2 threads). nncf's int8 activations are rewritten
to the equivalent uint8 ones (ORT's fast x86 kernels) unless --keep-s8. Needs `pip install nncf==3.4.0`
(dev extra); the results are in docs/accuracy-aware-int8.md ("NNCF as a peer").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

os.environ.setdefault("NNCF_CI", "1")  # nncf: no telemetry
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converter.accuracy.metrics import agreement, score  # noqa: E402
from converter.onnx.input_shapes import pin_input_shapes  # noqa: E402
from examples import ocr_samples as ocr  # noqa: E402
from bench_scratch import add_keep_work, run_folder  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "scripts" / "bench_accuracy.py")
ba = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)  # type: ignore[union-attr]

log = logging.getLogger("bench_nncf")


def ort_run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i: i + 1]})[0] for i in range(len(x))])


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    from converter.onnx.fold_affine import fold_for_quantization

    out, counts = fold_for_quantization(model)
    log.info("folds: %s", counts)
    return out


def opset13(model: onnx.ModelProto) -> onnx.ModelProto:
    """nncf quantizes per-tensor below opset 13 (per-channel DequantizeLinear needs `axis`): upgrade first."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, 13)


def activations_to_uint8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite int8 activation Q/DQ pairs to uint8 with zero point + 128 (exactly the same values).

    nncf emits signed int8 activations; ONNX Runtime's x86 CPU kernels are fast for uint8 activations x
    int8 weights (U8S8) and slow for S8S8, so nncf's models ran slower than float here. Weight
    Q/DQ nodes (constant input) are left alone."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = consts.get(name)
        return numpy_helper.to_array(node.attribute[0].t) if node is not None and node.attribute[0].name == "value" else None

    weights = set(inits) | set(consts)  # constants, and Q(constant) outputs (nncf without weight compression)
    weights |= {n.output[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in weights}
    changed, retyped = 0, set()
    for i, n in enumerate(g.node):
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or n.input[0] in weights:
            continue
        zp = value(n.input[2])
        if zp is None or zp.dtype != np.int8:
            continue
        name = f"{n.input[2]}_u8_{i}"
        g.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), name))
        n.input[2] = name
        changed += 1
        if n.op_type == "QuantizeLinear":
            retyped.add(n.output[0])
    stale = [v for v in g.value_info if v.name in retyped]  # recorded as int8: drop, ORT re-infers
    for v in stale:
        g.value_info.remove(v)
    return model, changed


def nncf_variants(kind: str, calib: np.ndarray, select: np.ndarray, sel_ref: np.ndarray) -> dict[str, Callable]:
    """name -> f(float ModelProto) -> quantized ModelProto."""
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedAccuracyRestorerParameters,
                                                       AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    task = ba.SETUPS[kind][1]
    n = len(calib)

    def ds(model: onnx.ModelProto, x: np.ndarray):
        name = model.graph.input[0].name
        return nncf.Dataset(list(x), lambda a: {name: a[None]})

    def ptq(**kw) -> Callable:
        def f(m: onnx.ModelProto) -> onnx.ModelProto:
            return nncf.quantize(m, ds(m, calib), subset_size=n, **kw)
        return f

    def validation_fn(model: onnx.ModelProto, items) -> tuple[float, list[float]]:
        idx = [i for i, _ in items]
        out = ort_run(model, select[idx])
        per = []
        for j, i in enumerate(idx):
            per.append(agreement(sel_ref[i: i + 1], out[j: j + 1], task)["agreement"])
        return float(np.mean(per)), per

    def aac(max_drop: float, preset=None, ranking: int = 16, iters: int = 8) -> Callable:
        def f(m: onnx.ModelProto) -> onnx.ModelProto:
            name = m.graph.input[0].name
            val = nncf.Dataset([(i, select[i]) for i in range(len(select))], lambda t: {name: t[1][None]})
            return nncf.quantize_with_accuracy_control(
                m, ds(m, calib), val, validation_fn, max_drop=max_drop, preset=preset, subset_size=n,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=iters, ranking_subset_size=min(ranking, len(select)), num_ranking_workers=1))
        return f

    P = nncf.QuantizationPreset
    return {
        "perf": ptq(preset=P.PERFORMANCE),
        "mixed": ptq(preset=P.MIXED),
        "perf-bc": ptq(preset=P.PERFORMANCE, fast_bias_correction=False),
        "perf-nobc": ptq(preset=P.PERFORMANCE, advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True)),
        "mixed-minmax": ptq(preset=P.MIXED, advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)),
        "mixed-quantile": ptq(preset=P.MIXED, advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)),
        "sq-conv": ptq(preset=P.MIXED, model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=0.5, matmul=0.95))),
        "aac-0.05": aac(0.05),
        "aac-0.05-mixed": aac(0.05, preset=P.MIXED),
    }


def bench(kind: str, variants: list[str], fold_modes: list[bool], runs: int, with_ours: bool, to_u8: bool) -> dict[str, Any]:
    shape, task, n_cal, n_sel, n_eval = ba.SETUPS[kind]
    work = Path(tempfile.mkdtemp(prefix=f"bench-nncf-{kind}-"))
    calib, select, held = ba.data(kind, n_cal, 1), ba.data(kind, n_sel, 2), ba.data(kind, n_eval, 3)
    base = pin_input_shapes(onnx.load(str(ocr.model_path(kind))), shape)
    float_path = work / "float.onnx"
    onnx.save(base, str(float_path))
    ref, sel_ref = ort_run(float_path, held), ort_run(float_path, select)
    models: dict[str, Path] = {"float": float_path}
    info: dict[str, dict[str, Any]] = {"float": {}}
    if with_ours:
        np.savez(work / "calib.npz", x=calib)
        np.savez(work / "select.npz", x=select)
        t0 = time.perf_counter()
        report, path = ba.ours(kind, ocr.model_path(kind), work / "calib.npz", work / "select.npz", work, "agreement:0.95", 8,
                               "auto" if kind == "cls" else ba.FAST_METHODS, 16)
        models["edgekit"] = path
        info["edgekit"] = {"seconds": round(time.perf_counter() - t0, 1), "precision": report["precision"]}
    table = nncf_variants(kind, calib, select, sel_ref)
    for fold in fold_modes:
        src = opset13(folded(base) if fold else base)
        for v in variants:
            label = f"nncf-{v}{'+fold' if fold else ''}"
            t0 = time.perf_counter()
            try:
                q = table[v](src)
                if to_u8:
                    q, n_u8 = activations_to_uint8(q)
                    log.info("%s: %d int8 activation Q/DQ nodes -> uint8", label, n_u8)
            except Exception as exc:  # record and carry on: one failing variant must not stop the table
                log.warning("%s failed: %s: %s", label, exc.__class__.__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                info[label] = {"error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
                continue
            p = work / f"{label}.onnx"
            onnx.save(q, str(p))
            models[label] = p
            info[label] = {"seconds": round(time.perf_counter() - t0, 1),
                           "selection_agreement": score(sel_ref, ort_run(p, select), task)["agreement"]}
            log.info("%s %s done in %.1f s", kind, label, info[label]["seconds"])
    lat = ba.latencies(models, held, runs)
    rows = {}
    for label, info_l in info.items():
        if label not in models:
            rows[label] = info_l
            continue
        s = score(ref, ort_run(models[label], held), task)
        rows[label] = {**info_l, "agreement": s["agreement"], "metric": s["metric"],
                       **{k: s[k] for k in ("mean_iou", "sequence_equal") if k in s},
                       "latency_ms": round(lat[label], 3), "speedup": round(lat["float"] / lat[label], 2),
                       "size_mb": round(models[label].stat().st_size / 1e6, 3)}
    return {"model": kind, "held_out": n_eval, "load_avg": round(os.getloadavg()[0], 2), "results": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="det,cls,rec")
    ap.add_argument("--variants", default="perf,mixed,perf-bc,perf-nobc,mixed-minmax,mixed-quantile,sq-conv,aac-0.05,aac-0.05-mixed")
    ap.add_argument("--fold", default="both", choices=["both", "yes", "no"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-ours", action="store_true", help="skip edgekit's own conversion")
    ap.add_argument("--keep-s8", action="store_true", help="keep nncf's int8 activations (slow S8S8 kernels on x86 ORT)")
    ap.add_argument("--json", action="store_true")
    add_keep_work(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("nncf", "converter", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if importlib.util.find_spec("nncf") is None:
        print("error: nncf is not installed: pip install nncf==3.4.0", file=sys.stderr)
        return 2
    folds = {"both": [False, True], "yes": [True], "no": [False]}[args.fold]
    results = []
    with run_folder(args.keep_work):
        for k in args.models.split(","):
            r = bench(k, args.variants.split(","), folds, args.runs, not args.no_ours, not args.keep_s8)
            results.append(r)
            if not args.json:
                _print_rows(r)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _print_rows(r: dict[str, Any]) -> None:
    print(f"\n{r['model']}: {r['held_out']} held-out inputs, load average {r['load_avg']}", flush=True)
    print(f"  {'variant':<26} {'held-out':>8} {'select':>7} {'ms':>8} {'speedup':>8} {'MB':>6} {'quant s':>7}")
    for label, x in r["results"].items():
        if "error" in x:
            print(f"  {label:<26} failed: {x['error'][:90]}")
            continue
        print(f"  {label:<26} {x['agreement']:>8.3f} {x.get('selection_agreement', float('nan')):>7.3f} "
              f"{x['latency_ms']:>8.2f} {x['speedup']:>7.2f}x {x['size_mb']:>6.2f} {x.get('seconds', 0):>7}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
