"""The peer rows of scripts/bench_detect.py: other tools' int8 of the same YOLO export, scored and timed as edgekit's.

Issue 15 asks for ONNX Runtime's defaults, NNCF and edgekit side by side on a YOLO-style detector too. Each peer is
calibrated on the same evenly sampled video frames the converter calibrates on (converter.data.video, the fp32
bundle's own preprocessing), scored on the same held-out frames with the gate's decoder and box matcher against the
float model (the Pi's int8 arithmetic, as tests.detector_data.held_out_score does for bundles), and timed in
alternating rounds against the same format's fp32 bundle (bench_detect.side_by_side). Peers are plain model files,
not bundles, so they have no pipeline row.

    onnx:ort-default    onnxruntime.quantization.quantize_static with its defaults (QDQ, MinMax, per-tensor int8)
    onnx:nncf           NNCF 3.4 nncf.quantize with its defaults (performance preset, fast bias correction)
    tflite:tf-default   onnx2tf + TFLiteConverter full int8 with TensorFlow's own calibration records (the
                        ORT-defaults analogue of scripts/bench_quant_real_tflite.py)
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("ort-default", "nncf", "tf-default")


def _tf_default(float_model: Path, calib: np.ndarray, out: Path) -> Path:
    """TensorFlow's full-integer int8 of the export, as onnx2tf + TFLiteConverter give it (float I/O)."""
    import onnx
    import onnxslim

    from converter.data import Dataset
    from converter.onnx.model_io import tensor_specs
    from converter.tflite.onnx2tf import onnx_to_tflite

    slim = out.with_suffix(".slim.onnx")  # what the converter's clean-up pass gives onnx2tf: fixed shapes, folded
    model = onnx.load(str(float_model))
    shape = ",".join(str(d) for d in (1, *calib.shape[1:]))
    onnx.save(onnxslim.slim(model, input_shapes=[f"{model.graph.input[0].name}:{shape}"]), str(slim))
    ins, _ = tensor_specs(slim)
    return onnx_to_tflite(slim, out.with_suffix(""), "int8-static", ins, Dataset({ins[0].name: calib}), len(calib),
                          measured_ranges=False).model


def make_peer(peer: str, float_model: Path, calib: np.ndarray, out: Path) -> Path:
    """The peer's int8 model of `float_model`, calibrated on `calib` (N, *source input shape)."""
    if peer == "tf-default":
        return _tf_default(float_model, calib, out.with_suffix(".tflite"))
    import bench_accuracy as ba
    from bench_quant_real import nncf_int8

    return {"ort-default": ba.default_int8, "nncf": nncf_int8}[peer](float_model, calib, out)


def peer_row(peer: str, fp32_bundle: Path, pub: Path, video: Path, held_out: Path, work: Path, threads: int,
             calibration_frames: int) -> dict:
    """One peer's row: matched boxes and mAP@0.5 against float on the held-out frames, speed-up vs fp32."""
    from bench_detect import side_by_side, unpack
    from bench_quant_real import fused_int8_kernels
    from converter.accuracy.detection import DetectionScorer
    from converter.data import load_dataset
    from converter.data.video import load_video
    from converter.onnx.int8_arithmetic import exact_int8_for
    from converter.runners import run_model
    from tests.detector_data import source_spec, yolo_onnx

    vb = unpack(fp32_bundle, pub, work / f"peer-{fp32_bundle.stem}")
    m = vb.manifest
    spec = source_spec(m.inputs[0])  # the export's own layout: what the peers calibrate and the scorer feeds
    float_model = yolo_onnx()
    calib = load_video(video, [spec], m.preprocess, calibration_frames)
    t0 = time.perf_counter()
    # NNCF's and TensorFlow's progress must not enter the --json output; ORT's shape inference leaves temporary
    # files in the working folder
    with contextlib.redirect_stdout(sys.stderr), contextlib.chdir(work):
        model = make_peer(peer, float_model, calib, work / f"{fp32_bundle.stem}-{peer}.onnx")
    seconds = round(time.perf_counter() - t0, 1)
    data = load_dataset(held_out, [spec], m.preprocess)
    reference = run_model(float_model, data)
    candidate = run_model(model, data, m.inputs, m.outputs, exact_int8=exact_int8_for("aarch64"))
    scorer = DetectionScorer(dict(m.postprocess.options), [t.name for t in m.outputs], len(m.labels or []) or None,
                             (m.preprocess.size[0], m.preprocess.size[1]))
    score = scorer(reference, candidate)
    return {"bundle": None, "rc": 0, "seconds_convert": seconds, "precision_written": f"int8 ({peer})",
            "frames": len(data), "int8_kernels": fused_int8_kernels(model) if model.suffix == ".onnx" else None,
            **{k: score.get(k) for k in ("agreement", "float_boxes", "lost_boxes", "extra_boxes", "map50_vs_float")},
            "speedup_vs_fp32": side_by_side(model, vb.unpacked_to / m.model_file, m, pub, threads)}
