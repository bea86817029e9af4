#!/usr/bin/env python3
"""Int8 on real pretrained ImageNet CNNs and real photos: ORT defaults vs NNCF vs edgekit, side by side.

  PYTHONPATH=. python scripts/bench_quant_real.py [--models mobilenet_v2,efficientnet_lite0] [--formats onnx,tflite]
      [--no-nncf] [--json]

Models and photos come from packages (examples/imagenet_cnns.py: torchvision's MobileNetV2 weights and
EfficientNet-Lite0, Debian's opencv-doc photos and videos, scikit-image photos). Photos are split by
source file: one side calibrates (edgekit also selects its recipe on half of it), the other side is the
held-out test set every figure below is measured on. Agreement = float's top-1 kept; "clear" = inputs
where float's top-1 probability leads the runner-up by > 0.2. Reference rows bound what any int8 can keep on
these photos: float itself under +-1 grey level of input noise, and int8 weights with float activations (rounded to
nearest, and GPTQ-rounded with bias correction), and int8 activations (minmax) with float weights. Latency: median ms, batch 1, 2 threads,
interleaved runs in one process; the speed-up is against fp32 on the same runtime (ORT float for the ONNX rows, TFLite
fp32 with XNNPACK for the TFLite rows: scripts/bench_quant_real_tflite.py). PP-OCR stays in scripts/bench_accuracy.py.
--qat adds QAT int8: the float model distilled into its fake-quant copy on the calibration side's photos only
(examples/qat_imagenet.py, no labels), exported as QDQ, converted by edge-convert (int8-qat), scored and timed as above.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_accuracy as ba  # noqa: E402
from converter.accuracy.metrics import score  # noqa: E402
from examples import imagenet_cnns as nets  # noqa: E402
from bench_scratch import add_keep_work, run_folder  # noqa: E402

log = logging.getLogger("bench_quant_real")


def nncf_int8(float_model: Path, calib: np.ndarray, out: Path) -> Path:
    """NNCF 3.4 post-training int8 (performance preset, its fast bias correction), activations moved to
    uint8 (same values) so ORT's CPU kernels run U8S8 as for the others (scripts/bench_nncf.py)."""
    import nncf
    import onnx

    from bench_nncf import activations_to_uint8, opset13

    m = opset13(onnx.load(str(float_model)))
    name = m.graph.input[0].name
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars must not enter this bench's --json output
        q = nncf.quantize(m, nncf.Dataset(list(calib), lambda a: {name: a[None]}), subset_size=len(calib))
    q, _ = activations_to_uint8(q)
    onnx.save(q, str(out))
    return out


def edgekit_int8(src: Path, calib: Path, select: Path, work: Path, normalization: tuple[np.ndarray, np.ndarray],
                 fold: str = "auto") -> tuple[dict, Path, float]:
    """`edge-convert convert` with the profile's defaults (the budget, auto compensation, the speed floor), told the
    model's preprocessing (--mean/--std on pixels / 255) as a user would, so it can fold it into the first conv
    (--fold-input; the bundle then takes grey levels). MinMax and mean per-input quantiles: ORT's histogram calibrators
    (percentile, entropy) hold every activation of every sample, GBs on a 224x224 CNN with a few hundred photos."""
    from converter.cli import main
    from edge_agent.bundle import generate_keypair

    key, _ = generate_keypair(work / "keys", overwrite=True)
    out = work / f"model.{fold}.edgebundle"
    mean, std = normalization
    args = ["-q", "convert", str(src), "--profile", "raspberry-pi-4", "--calibration", str(calib), "--eval", str(select),
            "--key", str(key), "--out", str(out), "--calibration-method", "minmax,meanquantile:99.99,linearquantile:99.9",
            "--bench-runs", "10", "--force", "--mean", ",".join(f"{v:.9g}" for v in mean),
            "--std", ",".join(f"{v:.9g}" for v in std), "--fold-input", fold]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0, "conversion failed"
    seconds = time.perf_counter() - t0
    with tarfile.open(out) as tar:
        tar.extract("model/model.onnx", work / f"bundle.{fold}", filter="data")
    return json.loads(Path(str(out) + ".report.json").read_text()), work / f"bundle.{fold}" / "model" / "model.onnx", seconds


def edgekit_qat(name: str, calib_side: np.ndarray, select: Path, work: Path, model: Path | None) -> tuple[dict, Path, dict]:
    """QAT by distillation from the float model on the calibration-side photos only (examples/qat_imagenet.py; or the
    QDQ export `model` of an earlier run), converted with `edge-convert convert` (keeps its scales: int8-qat)."""
    from converter.cli import main
    from edge_agent.bundle import generate_keypair
    from examples.qat_imagenet import qat_imagenet

    train = {"onnx": model, "trained": "earlier run"} if model else qat_imagenet(name, work / "qat", calib_side, log=log.warning)
    key, _ = generate_keypair(work / "keys", overwrite=True)
    out = work / "model.qat.edgebundle"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["-q", "convert", str(train["onnx"]), "--profile", "raspberry-pi-4", "--eval", str(select), "--key",
                     str(key), "--out", str(out), "--bench-runs", "10", "--force"]) == 0, "QAT conversion failed"
    with tarfile.open(out) as tar:
        tar.extract("model/model.onnx", work / "bundle.qat", filter="data")
    return json.loads(Path(str(out) + ".report.json").read_text()), work / "bundle.qat" / "model" / "model.onnx", train


def bundle_input(report: dict, x: np.ndarray) -> np.ndarray:
    """The held-out inputs as the bundle takes them: grey levels when the converter folded the normalisation."""
    from converter.onnx.fold_input import to_pixels

    fold = next((p for p in report["passes"] if p["pass"] == "fold-input"), {})
    return to_pixels(x, fold["scale"], fold["offset"]) if fold.get("folded") else x


def weights_only_int8(float_model: Path, out: Path) -> Path:
    """The float model with every Conv/Gemm weight rounded to ORT's per-channel int8 grid, activations float: the
    ceiling of any int8 recipe that keeps ORT's weight grid (it does not run faster: no speed-up is claimed)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(float_model))
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            axes = tuple(range(1, w.ndim))  # per output channel (Gemm: rows, as exported with transB=1)
            scale = np.maximum(np.abs(w).max(axis=axes, keepdims=True), 1e-12) / 127
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127) * scale, n.input[1]))
    onnx.save(m, str(out))
    return out


def plain_int8(float_model: Path, calib: np.ndarray, work: Path) -> Path:
    """ORT static QDQ with the profile's grid (minmax ranges, per-channel int8 weights, uint8 activations), no
    compensation, equalization or float layers: the activation ranges of the activations-only row."""
    from converter.data import Dataset
    from converter.onnx.qdq_quantizer import OrtStaticQuantizer

    import onnx

    name = onnx.load(str(float_model), load_external_data=False).graph.input[0].name
    (work / "plain").mkdir(exist_ok=True)
    q = OrtStaticQuantizer(float_model, work / "plain", Dataset({name: calib}), len(calib))
    return q.quantize("minmax", dst=work / "plain" / "int8.onnx")


def weights_only_gptq(float_model: Path, calib: np.ndarray, work: Path) -> Path:
    """The same, with the weights GPTQ-rounded onto that grid and the biases corrected, fitted in order on 32
    calibration inputs (converter/onnx/weight_compensation.py: what the TFLite path feeds onnx2tf)."""
    from converter.data import Dataset
    from converter.onnx.weight_compensation import compensate_weights_only

    import onnx

    name = onnx.load(str(float_model), load_external_data=False).graph.input[0].name
    out, _ = compensate_weights_only(float_model, Dataset({name: calib[:32]}), work / "wcomp", work / "wonly.gptq.onnx")
    return out


def activations_only_int8(qdq_model: Path, float_model: Path, out: Path) -> Path:
    """A QDQ model with every weight and bias DequantizeLinear replaced by the float model's own tensor: int8
    activations (the same ranges), float weights. Bounds what any weight compensation can recover."""
    import onnx
    from onnx import numpy_helper

    q, f = onnx.load(str(qdq_model)), onnx.load(str(float_model))
    finit = {i.name: i for i in f.graph.initializer}
    fnodes = {n.name: n for n in f.graph.node}
    qinit = {i.name for i in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    drop = []
    for n in q.graph.node:
        fn = fnodes.get(n.name)
        if n.op_type not in ("Conv", "Gemm") or fn is None:
            continue
        for k in (1, 2):
            dq = producer.get(n.input[k]) if k < len(n.input) else None
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in qinit or fn.input[k] not in finit:
                continue
            name = f"{fn.input[k]}_float"
            q.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(finit[fn.input[k]]), name))
            n.input[k] = name
            drop.append(dq)
    for dq in drop:
        q.graph.node.remove(dq)
    onnx.save(q, str(out))
    return out


def input_noise_floor(float_model: Path, test: np.ndarray, std: np.ndarray, levels: float = 1.0) -> np.ndarray:
    """Float's outputs on the held-out inputs with +-`levels` grey levels of uniform noise per pixel (invisible, below
    JPEG's own error): how often float itself changes its answer without any quantization."""
    noise = np.random.default_rng(1).uniform(-levels, levels, test.shape).astype(np.float32) / 255
    return ba.run(float_model, (test + noise / std.reshape(1, -1, 1, 1)).astype(np.float32))


def fused_int8_kernels(model: Path) -> int:
    """Int8 kernels in ORT's optimized graph (QLinearConv, QGemm, ...): a QDQ model ORT could not fuse runs in float."""
    import onnx
    import onnxruntime as ort

    opt = model.with_suffix(".optimized.onnx")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    return sum(n.op_type.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger")) for n in onnx.load(str(opt)).graph.node)


def bench(name: str, runs: int, with_nncf: bool, fold_ablation: bool = False, formats: tuple[str, ...] = ("onnx",),
          qat: str | None = None, ptq: bool = True) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-real-{name}-"))
    float_model = nets.export(name, work / "float.onnx")
    calib_side, test = nets.photo_split(400, 400, model=name)
    calib, select = calib_side[0::2], calib_side[1::2]
    np.savez(work / "calib.npz", x=calib)
    np.savez(work / "select.npz", x=select)
    out = {"model": name, "calibration_inputs": len(calib), "selection_inputs": len(select), "held_out_inputs": len(test),
           "results": {}}
    if "onnx" in formats:
        out.update(onnx_rows(name, float_model, calib, test, work, runs, with_nncf, fold_ablation, calib_side, qat, ptq))
    if "tflite" in formats:
        from bench_quant_real_tflite import tflite_rows

        load = [round(v, 2) for v in os.getloadavg()]
        rows, out["tflite"] = tflite_rows(float_model, calib, test, ba.run(float_model, test), work,
                                          nets.NORMALIZATION[name], runs)
        out["tflite"]["load_average"] = [load, [round(v, 2) for v in os.getloadavg()]]
        out["results"].update(rows)
    return out


def onnx_rows(name: str, float_model: Path, calib: np.ndarray, test: np.ndarray, work: Path, runs: int, with_nncf: bool,
              fold_ablation: bool, calib_side: np.ndarray | None = None, qat: str | None = None, ptq: bool = True) -> dict:
    """The ONNX rows: ORT defaults, edgekit, NNCF and the reference rows, plus edgekit's conversion summary; with `qat`
    ("train" or a QDQ export's path) the QAT row too; ptq=False: float, ORT defaults and QAT only (a quick speed run)."""
    models = {"float": float_model, "ort-default-int8": ba.default_int8(float_model, calib, work / "default.onnx")}
    inputs, report, convert_s, summary = {}, {"measurements": {}, "passes": [], "precision": None}, 0.0, {}
    if ptq:
        report, models["edgekit-int8"], convert_s = edgekit_int8(float_model, work / "calib.npz", work / "select.npz",
                                                                 work, nets.NORMALIZATION[name])
        inputs["edgekit-int8"] = bundle_input(report, test)
    if qat:
        t0 = time.perf_counter()
        qreport, models["edgekit-qat-int8"], train = edgekit_qat(name, calib_side, work / "select.npz", work,
                                                                 None if qat == "train" else Path(qat))
        summary["qat"] = {"precision": qreport["precision"], "seconds": round(time.perf_counter() - t0, 1),
                          "gate": qreport["measurements"].get("accuracy"), **{k: v for k, v in train.items() if k != "onnx"}}
    if fold_ablation:  # the same conversion with the normalisation left in float: what the fold itself is worth
        off, models["edgekit-int8, input not folded"], _ = edgekit_int8(
            float_model, work / "calib.npz", work / "select.npz", work, nets.NORMALIZATION[name], fold="off")
        inputs["edgekit-int8, input not folded"] = bundle_input(off, test)
    if with_nncf and ptq:
        try:
            models["nncf-int8"] = nncf_int8(float_model, calib, work / "nncf.onnx")
        except Exception as exc:  # noqa: BLE001 - a peer failing must not stop the table
            log.warning("nncf failed: %s", exc)
    ref = ba.run(float_model, test)
    timing_load = [round(os.getloadavg()[0], 2)]
    lat = ba.latencies(models, test, runs)
    timing_load.append(round(os.getloadavg()[0], 2))
    rows = {}
    # reference rows, not int8 recipes: float itself under +-1 grey level of input noise, and weights-only int8
    plain = plain_int8(float_model, calib, work) if ptq else None
    for label, out in () if not ptq else (("float +-1/255 noise", input_noise_floor(float_model, test, nets.NORMALIZATION[name][1])),
                       ("int8 weights only", ba.run(weights_only_int8(float_model, work / "wonly.onnx"), test)),
                       ("int8 weights only, GPTQ", ba.run(weights_only_gptq(float_model, calib, work), test)),
                       ("int8 activations only", ba.run(activations_only_int8(plain, float_model, work / "aonly.onnx"),
                                                        test))):
        s = score(ref, out, "classification")
        rows[label] = {"agreement": s["agreement"], "clear_agreement": s.get("clear_agreement"),
                       "clear_share": s.get("clear_share"), "latency_ms": None, "speedup_vs_float": None,
                       "int8_kernels": 0}
    for label, model in models.items():
        s = score(ref, ba.run(model, inputs.get(label, test)), "classification")
        rows[label] = {"agreement": s["agreement"], "clear_agreement": s.get("clear_agreement"),
                       "clear_share": s.get("clear_share"), "latency_ms": round(lat[label], 3),
                       "speedup_vs_float": round(lat["float"] / lat[label], 2),
                       "int8_kernels": fused_int8_kernels(model) if label != "float" else 0}
    m = report["measurements"]
    mixed = m.get("mixed_precision", {})
    quant = next((p for p in report["passes"] if p["pass"] == "quantize"), {})
    return {**summary, "precision": report["precision"], "gate_passed": m.get("accuracy", {}).get("passed"),
            "convert_seconds": round(convert_s, 1), "calibration": quant.get("calibration_method"),
            "compensation": quant.get("compensation"), "equalization": quant.get("equalization"), "float_layers": mixed.get("float_layers", []),
            "input_folded": bool(next((p for p in report["passes"] if p["pass"] == "fold-input"), {}).get("folded")),
            "tradeoff_curve": mixed.get("steps"), "load_average": [round(v, 2) for v in os.getloadavg()],
            "timing_load": timing_load, "results": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(nets.MODELS))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--formats", default="onnx,tflite", help="onnx (ORT rows), tflite (LiteRT rows), or both")
    ap.add_argument("--fold-ablation", action="store_true", help="also convert with --fold-input off (a second conversion)")
    ap.add_argument("--qat", nargs="?", const="train", metavar="QDQ_ONNX",
                    help="add the QAT row: distil on the calibration side (examples/qat_imagenet.py, ~15 min), or "
                         "convert and score the given QDQ export of an earlier run")
    ap.add_argument("--qat-only", action="store_true", help="with --qat: only float, ORT defaults and QAT (no "
                    "post-training conversion, NNCF or reference rows: a short run for a quiet speed figure)")
    add_keep_work(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure_apt.sh"), "opencv-doc", "__none__", str(nets.OPENCV_DATA)],
                   check=False)
    results = []
    with run_folder(args.keep_work):
        for m in args.models.split(","):
            results.append(bench(m, args.runs, not args.no_nncf, args.fold_ablation, tuple(args.formats.split(",")),
                                 args.qat, not args.qat_only))
            log.warning("%s done: %s", m, json.dumps(results[-1]["results"], default=str))
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    for r in results:
        print(f"\n{r['model']}: {r['held_out_inputs']} held-out photos")
        if "qat" in r:
            print(f"  ONNX QAT: {json.dumps(r['qat'], default=str)}; timing load {r['timing_load']}")
        if r.get("precision"):
            print(f"  ONNX: edgekit {r['precision']} (gate {'passed' if r['gate_passed'] else 'missed'}), calibration "
                  f"{r['calibration']}, compensation {(r['compensation'] or {}).get('chosen')}, equalization "
                  f"{(r['equalization'] or {}).get('chosen')}, {len(r['float_layers'])} layers float, input "
                  f"{'folded' if r['input_folded'] else 'not folded'}, {r['convert_seconds']} s, load average {r['load_average']}")
        if "tflite" in r:
            t = r["tflite"]
            print(f"  TFLite: edgekit {t['precision']} (gate {'passed' if t['gate_passed'] else 'missed'}), calibration "
                  f"{t['calibration']} {t.get('calibration_candidates')}, compensation "
                  f"{t['compensation']}, {len(t['float_layers'])} layers float, input "
                  f"{'folded' if t['input_folded'] else 'not folded'} {[(q['scale'], q['zero_point']) for q in t['pixel_input_quantization'] or []]}, "
                  f"{t['convert_seconds']} s, load average {t['load_average']}")
        for label, row in r["results"].items():
            clear = f"{row['clear_agreement']:.3f} clear ({row['clear_share']:.0%})" if row["clear_agreement"] is not None else ""
            speed = (f"{row['latency_ms']:8.3f} ms {row['speedup_vs_float']:5.2f}x" if row["latency_ms"] is not None
                     else f"{'(reference, not timed)':>20s}")
            print(f"  {label:20s} agreement {row['agreement']:.3f}  {clear:22s} {speed}  int8 kernels {row['int8_kernels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
