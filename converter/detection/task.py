"""The task of a model and the postprocessing its bundle gets.

Ultralytics writes `task`, `names`, `imgsz`, `stride` (and `end2end` for NMS-in-graph exports) into
the ONNX metadata_props; when present they win over --task, so `edge-convert convert yolov8n.onnx`
with no extra flag gives a detection bundle with class names and letterbox preprocessing.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.bundle import Postprocess, TensorSpec

from ..errors import ImportFailed

log = logging.getLogger(__name__)
TASKS = ("classify", "detect", "segment", "pose", "obb", "none")
BOX_TASKS = ("detect", "segment", "pose", "obb")
EXTRAS_PER_ROW = {"segment": 32, "pose": 51}  # mask coefficients / 17 keypoints x 3 after the class scores


@dataclass
class ModelTask:
    task: str = "classify"
    names: list[str] | None = None
    imgsz: list[int] | None = None
    stride: int | None = None
    end2end: bool = False
    origin: str = "default"  # metadata | option | default
    metadata: dict[str, str] = field(default_factory=dict)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_metadata(onnx_path: Path | None) -> dict[str, str]:
    """The ONNX model's metadata_props (empty for other formats or unreadable files)."""
    if onnx_path is None or onnx_path.suffix != ".onnx":
        return {}
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # the importer already vouched for the file
        return {}
    return {p.key: p.value for p in model.metadata_props}


def model_task(onnx_path: Path | None, option: str | None, metadata: dict[str, str] | None = None) -> ModelTask:
    """The task from the model's metadata (wins), else --task, else classify."""
    meta = read_metadata(onnx_path) if metadata is None else metadata
    out = ModelTask(metadata=meta)
    if meta.get("task") in TASKS:
        out.task, out.origin = meta["task"], "metadata"
        if option and option != out.task:
            log.warning("--task %s ignored: the model's metadata says %s", option, out.task)
    elif option:
        out.task, out.origin = option, "option"
    names = _literal(meta.get("names", "")) if meta.get("names") else None
    if isinstance(names, dict):
        out.names = [str(names[k]) for k in sorted(names, key=int)]
    elif isinstance(names, (list, tuple)):
        out.names = [str(n) for n in names]
    imgsz = _literal(meta.get("imgsz", "")) if meta.get("imgsz") else None
    if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2:
        out.imgsz = [int(imgsz[0]), int(imgsz[1])]
    if meta.get("stride", "").isdigit():
        out.stride = int(meta["stride"])
    out.end2end = str(meta.get("end2end", "")).lower() == "true"
    return out


def detection_postprocess(t: ModelTask, outputs: list[TensorSpec], output_role: str | None,
                          labels: list[str] | None) -> Postprocess:
    """Postprocess for a box task: the head format from the output shapes, the output that holds the boxes."""
    names = [o.name for o in outputs]
    if output_role is not None and output_role not in names:
        raise ImportFailed(f"--output-role {output_role!r} is not an output of the model ({', '.join(names)})")
    if len(outputs) > 1 and output_role is None and t.origin != "metadata":
        raise ImportFailed(f"the model has {len(outputs)} outputs ({', '.join(f'{o.name} {o.shape}' for o in outputs)}): "
                           "name the one holding the detections with --output-role NAME")
    served = output_role or names[0]
    shape = next(o.shape for o in outputs if o.name == served)
    _check_rows(t.task, served, shape)
    options: dict[str, Any] = {"score_threshold": 0.25, "iou_threshold": 0.45, "output": served}
    rows = shape[-1] if len(shape) == 3 else None
    if t.end2end or (isinstance(rows, int) and rows in (6, 7) and (not labels or len(labels) + 4 not in shape)):
        options["format"] = "yolo-nms"
    else:
        options["format"] = "yolo"
        if labels and len(shape) == 3:
            attrs = min(d for d in shape[1:] if isinstance(d, int)) if all(isinstance(d, int) for d in shape[1:]) else None
            extras = EXTRAS_PER_ROW.get(t.task, 0)
            if attrs is not None and attrs == 5 + len(labels) + extras:
                options["objectness"] = True
            elif attrs is not None and attrs == 4 + len(labels) + extras:
                options["objectness"] = False
            if extras:
                options["row_extras"] = extras
    return Postprocess(kind="detection", softmax=False, top_k=1, options=options)


def _check_rows(task: str, served: str, shape: list) -> None:
    """A box task decodes rows of boxes ([N, K] or [1, N, K]); any other output made a bundle that every
    `edge-agent run` refused (exit 75), or a gate that stopped on the decoder's error."""
    if len(shape) in (2, 3):
        return
    hint = ("; a per-pixel mask (semantic segmentation, e.g. a person mask) converts with --task none: the bundle "
            "serves the mask as the model gives it and the gate compares thresholded masks (IoU)"
            if task == "segment" else "; --task none serves the outputs as they are")
    raise ImportFailed(f"--task {task} decodes YOLO-style rows of boxes ([1, N, K]), but output {served} has shape "
                       f"{shape}{hint}")


def classification_postprocess(outputs: list[TensorSpec], output_role: str | None, top_k: int) -> Postprocess:
    """A classifier's postprocess; with several outputs the served one is named in the manifest (option
    `output`), so neither the agent nor the gate reads output 0 by accident (issue 14, defect 5)."""
    names = [o.name for o in outputs]
    if output_role is not None and output_role not in names:
        raise ImportFailed(f"--output-role {output_role!r} is not an output of the model ({', '.join(names)})")
    options: dict[str, Any] = {}
    if output_role is not None or len(outputs) > 1:
        options["output"] = output_role or names[0]
        if output_role is None:
            log.warning("the model has %d outputs (%s): serving %s as the class scores; name another with --output-role",
                        len(names), ", ".join(names), names[0])
    return Postprocess(kind="classification", softmax=True, top_k=top_k, options=options)


def default_postprocess(t: ModelTask, outputs: list[TensorSpec], output_role: str | None, top_k: int) -> Postprocess:
    """A model with no --task and no metadata is taken for a classifier only when its served output is a score
    vector ([N, C]): top-k over a flattened map, sequence or embedding is a made-up answer, so those bundles serve
    the raw outputs (`--task classify` still forces classes)."""
    if t.task != "classify":
        if output_role is not None:  # was dropped without a word, and the gate scored output 0 instead
            raise ImportFailed(f"--output-role {output_role} names the output a classifier or detector serves; "
                               f"--task {t.task} serves every output as the model gives it (and the gate checks "
                               "each): drop --output-role, or give --task classify")
        return Postprocess(kind="none")
    served = next((o for o in outputs if o.name == output_role), outputs[0] if outputs else None)
    if t.origin == "default" and served is not None and not _score_vector(served.shape) \
            and output_role in (None, served.name):
        log.warning("output %s %s%s is not a vector of class scores: the bundle serves the raw outputs (pass "
                    "--task classify for top-k classes)", served.name, served.dtype, served.shape)
        return Postprocess(kind="none")
    return classification_postprocess(outputs, output_role, top_k)


def _score_vector(shape: list | None) -> bool:
    """Not a map or a sequence: fewer than 2 non-unit axes past the batch. [N, C], C scores with unit axes around
    them ([N, 1000, 1, 1] from a conv head, as SqueezeNet's), [C] and unknown shapes stay classifiers. One value
    per sample ([N, 1], [1, 1, 1, 1]: a presence logit) ranks nothing: softmax made every answer class 0 at 1.0."""
    past_batch = (shape or [])[1:]
    spread = [d for d in past_batch if not (isinstance(d, int) and d == 1)]
    return len(spread) < 2 and not (past_batch and not spread)


def anchor_postprocess(outputs: list[TensorSpec], anchors_file: Path) -> Postprocess:
    """SSD/BlazeFace-style heads: raw regressors + logits, decoded against anchors recorded in the manifest."""
    import numpy as np

    from ..errors import DataError

    try:
        anchors = np.load(anchors_file).astype(np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"--anchors {anchors_file}: not a readable .npy array ({exc})") from exc
    if anchors.ndim != 2 or anchors.shape[1] not in (2, 4):
        raise DataError(f"--anchors {anchors_file}: shape {anchors.shape}; expected (N, 2) centres or (N, 4) cx, cy, w, h")
    if len(outputs) != 2:
        raise ImportFailed(f"anchor-based heads need two outputs (regressors and scores); the model has {len(outputs)}")
    last = [o.shape[-1] if isinstance(o.shape[-1], int) else 0 for o in outputs]
    boxes, scores = (outputs[0], outputs[1]) if last[0] >= last[1] else (outputs[1], outputs[0])
    counts = {o.name: o.shape[-2] for o in outputs if len(o.shape) >= 2}
    if any(isinstance(n, int) and n != len(anchors) for n in counts.values()):
        raise DataError(f"--anchors {anchors_file} holds {len(anchors)} anchors but the outputs have {counts}")
    return Postprocess(kind="detection", softmax=False, top_k=1, options={
        "format": "ssd-anchors", "boxes_output": boxes.name, "scores_output": scores.name,
        "anchors": [[round(float(v), 6) for v in a] for a in anchors],
        "score_threshold": 0.5, "iou_threshold": 0.3, "class_agnostic": True})
