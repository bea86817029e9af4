"""Import pass: load the source, describe its inputs/outputs, load calibration/eval data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_agent.bundle import Preprocess

from ..data import load_dataset, warn_if_degenerate
from ..detection.task import (BOX_TASKS, TASKS, anchor_postprocess, default_postprocess, detection_postprocess,
                              model_task, read_metadata)
from ..errors import DataError, UsageError
from ..importers import import_model
from ..onnx.model_io import ort_session, tensor_specs
from ..options import PassOption, float_list, input_shape, input_shapes, whole_number
from .base import ConversionContext, Pass

log = logging.getLogger(__name__)


def resampler_for(option: str, box_task: bool) -> str:
    """`auto`: OpenCV for detectors (camera bundles: native resize, and the agent reads video with OpenCV
    anyway) when it is installed here; Pillow otherwise (the agent's light install has no OpenCV)."""
    if option != "auto":
        if option == "opencv":
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise DataError("--resampler opencv needs OpenCV: pip install opencv-python-headless") from None
        return option
    if not box_task:
        return "pillow"
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "pillow"
    return "opencv"


class ImportPass(Pass):
    """Load the source model, describe its inputs/outputs and preprocessing, load calibration/eval data."""

    name = "import"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {
            "input_shape": PassOption(input_shape, None, "input shape, e.g. 1x3x224x224: required for PyTorch sources; "
                                      "pins dynamic ONNX input dims; a model with several inputs takes one per input, "
                                      "repeated: --input-shape ids=1x128 --input-shape mask=1x128",
                                      check=input_shapes, repeat=True),
            "opset": PassOption(int, None, "ONNX opset for PyTorch export (default 20)"),
            "color": PassOption(str, "RGB", "colour order the model expects", choices=("RGB", "BGR", "GRAY")),
            "scale": PassOption(float, 1.0 / 255.0, "pixel scale before mean/std (default 1/255)"),
            "mean": PassOption(float_list, (0.0,), "per-channel mean, comma-separated (after scale)"),
            "std": PassOption(float_list, (1.0,), "per-channel std, comma-separated (after scale)"),
            "resize": PassOption(str, "bilinear", "how images are resized to the input size (default bilinear)",
                                 choices=("bilinear", "nearest", "letterbox")),
            "resampler": PassOption(str, "auto", "which library resizes, recorded in the manifest so the device "
                                    "resizes exactly as calibration did: opencv (cv2.resize INTER_LINEAR, native, for "
                                    "cameras), pillow (PIL BILINEAR), auto = opencv for detectors when OpenCV is "
                                    "installed, else pillow", choices=("auto", "opencv", "pillow")),
            "layout": PassOption(str, None, "input layout (default: guessed from the shape)", choices=("NCHW", "NHWC")),
            "top_k": PassOption(whole_number(1), 5, "classes the agent reports (default 5)"),
            "task": PassOption(str, None, "what the model does (default: the model's metadata, e.g. Ultralytics "
                               "exports, else classify for an [N, C] score output and none, raw outputs, for "
                               "maps and sequences); detect/segment/pose give a detection bundle",
                               choices=TASKS),
            "output_role": PassOption(str, None, "for models with several outputs: the output the agent serves "
                                      "(detections for box tasks)", metavar="OUTPUT_NAME"),
            "anchors": PassOption(Path, None, "anchor-based detectors (SSD, BlazeFace): .npy of (N, 2) centres or "
                                  "(N, 4) cx, cy, w, h normalised to the input; recorded in the manifest",
                                  metavar="ANCHORS.npy"),
            "skip_unreadable": PassOption(bool, False, "skip image files that cannot be read (counted in the report) "
                                          "instead of stopping", flag="--skip-unreadable-images"),
        }

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        o, cfg = ctx.options, self.config(ctx)
        meta = read_metadata(Path(o.source)) if o.source.endswith(".onnx") and Path(o.source).is_file() else {}
        task = model_task(None, cfg.task or ("detect" if cfg.anchors else None), meta)
        shape = input_shapes(cfg.input_shape) or _shape_from_metadata(o.source, task)
        data = [Path(p) for p in (o.calibration, o.evaluation) if p]
        ctx.imported = import_model(o.source, ctx.workdir, shape, cfg.opset, data)
        if ctx.imported.onnx_path is not None:
            ctx.float_model = ctx.model = ctx.imported.onnx_path
            ctx.inputs, ctx.outputs = tensor_specs(ctx.float_model, cfg.layout)
            # a model ORT cannot load (a custom op, a newer opset) failed late in ORT's words, or with no data and
            # no benchmark was packaged (exit 0) for a device that cannot load it either
            ort_session(ctx.float_model, optimize=False)
        else:  # Keras / SavedModel / .tflite: the float32 TFLite reference describes the model
            from ..tflite.model_io import tflite_specs

            ctx.float_model = ctx.model = ctx.imported.tflite_path
            ctx.inputs, ctx.outputs = tflite_specs(ctx.float_model)
        ctx.preprocess = _image_preprocess(ctx.inputs[0], cfg, task.task in BOX_TASKS,
                                           bool(ctx.options.pass_options.get("resize")))
        _warn_unused_image_options(ctx.preprocess, ctx.inputs[0], o.pass_options)
        if task.names and not o.labels:
            o.labels = task.names
        if cfg.anchors is not None:
            ctx.postprocess = anchor_postprocess(ctx.outputs, cfg.anchors)
        elif task.task in BOX_TASKS:
            ctx.postprocess = detection_postprocess(task, ctx.outputs, cfg.output_role, o.labels)
        else:
            ctx.postprocess = default_postprocess(task, ctx.outputs, cfg.output_role, cfg.top_k)
        if o.eval_labels is not None and ctx.postprocess.kind != "detection":
            log.warning("--eval-labels does nothing here: the model is not a detector (ground-truth boxes score "
                        "detections only); give --task detect if it is one")
        if o.calibration:
            ctx.calibration = load_dataset(o.calibration, ctx.inputs, ctx.preprocess, o.labels, o.calibration_samples,
                                           cfg.skip_unreadable, flat=task.task in BOX_TASKS, classes=False,
                                           max_images=o.calibration_samples)
            warn_if_degenerate(ctx.calibration, "calibration")
        if o.evaluation:
            ctx.evaluation = load_dataset(o.evaluation, ctx.inputs, ctx.preprocess, o.labels, o.calibration_samples,
                                          cfg.skip_unreadable, flat=task.task in BOX_TASKS, max_images=o.eval_samples)
        if ctx.evaluation is None and ctx.calibration is not None:
            log.warning("no --eval data: the accuracy gate compares float vs converted outputs on the calibration data")
        if o.labels and ctx.evaluation is not None and ctx.evaluation.labels is not None:
            if int(ctx.evaluation.labels.max()) >= len(o.labels):
                raise DataError(f"eval labels go up to {int(ctx.evaluation.labels.max())} but only {len(o.labels)} label names were given")
        _check_label_count(ctx.postprocess, ctx.outputs, o.labels,
                           ctx.evaluation.labels if ctx.evaluation is not None else None)
        skipped = [*(ctx.calibration.skipped if ctx.calibration else []), *(ctx.evaluation.skipped if ctx.evaluation else [])]
        return {
            "task": {"task": "none" if task.task == "classify" and ctx.postprocess.kind == "none" else task.task,
                     "from": task.origin, **({"classes": len(task.names)} if task.names else {}),
                     **({"postprocess": ctx.postprocess.options} if ctx.postprocess.kind == "detection" else {})},
            **({"skipped_unreadable_images": len(skipped), "skipped_files": skipped[:20]} if skipped else {}),
            "source": o.source,
            "source_format": ctx.imported.source_format,
            "opset": ctx.imported.opset,
            **({"details": ctx.imported.details} if ctx.imported.details else {}),
            "inputs": [f"{t.name} {t.dtype}{t.shape} {t.layout}" for t in ctx.inputs],
            "outputs": [f"{t.name} {t.dtype}{t.shape}" for t in ctx.outputs],
            "calibration_samples": len(ctx.calibration) if ctx.calibration else 0,
            "eval_samples": len(ctx.evaluation) if ctx.evaluation else 0,
            **({"eval_samples_available": ctx.evaluation.available} if ctx.evaluation and ctx.evaluation.available else {}),
        }


def _check_label_count(post, outputs: list, labels: list[str] | None, eval_labels=None) -> None:
    """A --labels file with another number of names than the classifier has classes names the wrong classes
    (or leaves some as bare numbers) on the device: say so while converting. Eval labels the model cannot output
    (1-based, or another model's) would make its accuracy and the gate's top-1 drop meaningless: refused."""
    if post is None or post.kind != "classification" or not outputs:
        return
    served = next((t for t in outputs if t.name == (post.options or {}).get("output")), outputs[0])
    spread = [d for d in served.shape[1:] if not (isinstance(d, int) and d == 1)]
    classes = spread[0] if len(spread) == 1 else None
    if not (isinstance(classes, int) and classes > 0):
        return
    if labels and classes != len(labels):
        log.warning("--labels has %d names but output %s has %d classes: check the file (the agent names "
                    "classes by position)", len(labels), served.name, classes)
    if eval_labels is not None and len(eval_labels) and (int(eval_labels.max()) >= classes or int(eval_labels.min()) < 0):
        raise DataError(f"eval labels range {int(eval_labels.min())}..{int(eval_labels.max())} but output {served.name} "
                        f"has {classes} classes (0..{classes - 1}): are they 1-based, or for another model?")


IMAGE_OPTIONS = ("color", "scale", "mean", "std", "resize", "resampler")


def _warn_unused_image_options(pre: Preprocess, first, given: dict[str, Any]) -> None:
    """--mean/--std (and the other image options) given for an input that takes no images (a vector, or an image
    of dynamic size) were dropped without a word: the bundle then had no preprocessing at all."""
    unused = [f"--{n}" for n in IMAGE_OPTIONS if n in given]
    if pre.kind == "image" or not unused:
        return
    dynamic = len(first.shape) == 4 and not all(isinstance(d, int) and d > 0 for d in first.shape[1:])
    log.warning("%s %s nothing: input %r is %s%s, not an image of fixed size, so the bundle has no image "
                "preprocessing%s", ", ".join(unused), "does" if len(unused) == 1 else "do", first.name, first.dtype,
                list(first.shape), ": pin its size with --input-shape" if dynamic else "")


def _image_preprocess(first, cfg, boxes: bool, resize_given: bool) -> Preprocess:
    """The image preprocessing for an NCHW/NHWC input of fixed size (else none). A plain uint8 input (TensorFlow
    exports taking raw pixels) gets the grey levels as they are: scale/mean/std would make floats it cannot take.
    A quantized uint8 input (full-int8 *_quant.tflite) takes the normalised floats, quantized with its own scale."""
    if len(first.shape) != 4 or first.layout not in ("NCHW", "NHWC"):
        return Preprocess(kind="none")
    h, w = (first.shape[2], first.shape[3]) if first.layout == "NCHW" else (first.shape[1], first.shape[2])
    channels = first.shape[1] if first.layout == "NCHW" else first.shape[3]
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0) or channels not in (1, 3):
        return Preprocess(kind="none")  # an image has 1 or 3 channels (a 5-band or mis-laid-out input is no image)
    scale, mean, std = cfg.scale, list(cfg.mean), list(cfg.std)
    if cfg.color == "GRAY" and channels != 1:
        raise UsageError(f"--color GRAY gives one channel; input {first.name} has {channels}: use RGB or BGR")
    for flag, values in (("--mean", mean), ("--std", std)):  # checked now, not at the first image or the manifest
        if len(values) not in (1, channels):
            raise UsageError(f"{flag} has {len(values)} values; input {first.name} has {channels} channels: give 1 "
                             f"or {channels}")
    if any(v == 0 for v in std):
        raise UsageError("--std values divide the pixels: they must not be 0")
    if first.dtype == "uint8" and first.quantization is None:
        if (scale, mean, std) != (1 / 255, [0.0], [1.0]):
            log.warning("input %s takes uint8 pixels: --scale/--mean/--std ignored (the model normalises itself)",
                        first.name)
        scale, mean, std = 1.0, [0.0], [1.0]
    return Preprocess(kind="image", color="GRAY" if channels == 1 else cfg.color, size=[h, w],
                      resize="letterbox" if boxes and not resize_given else cfg.resize,
                      resampler=resampler_for(cfg.resampler, boxes), scale=scale, mean=mean, std=std)


def _shape_from_metadata(source: str, task) -> list[int] | None:
    """Ultralytics exports with dynamic axes record the size they were trained at (imgsz): pin to it."""
    if task.imgsz is None or not source.endswith(".onnx"):
        return None
    import onnx

    model = onnx.load(source, load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    if len(dims) != 4 or all(d.dim_value > 0 for d in dims):
        return None
    channels = dims[1].dim_value or 3
    log.info("dynamic input pinned to the model's metadata imgsz %s", task.imgsz)
    return [1, channels, *task.imgsz]
