"""Weight and bias compensation after rounding: layer-wise reconstruction on the float ONNX graph.

Post-training int8 loses a model's answers through two errors that add up layer after layer: the
weights are rounded, and every layer reads inputs that upstream quantization already moved. Both are
compensated here, on the *float* graph before ONNX Runtime's QDQ quantizer runs, so the result stays a
plain QDQ model that ORT fuses into its int8 kernels exactly as before (no new op, no float islands):

  bias     empirical bias correction (Nagel et al. 2019, DFQ; AIMET/Quark "bias correction"): per output
           channel, the bias absorbs the mean shift between the float layer on float inputs and the
           int8-rounded layer on the int8 model's inputs.
  weights  a closed-form, gradient-free layer-wise reconstruction in the spirit of AdaQuant/GPTQ: per
           layer, ridge least squares W' = argmin ||W' x_q + b' - W x_f - b||^2 + lam ||W' - W||^2_D,
           fitted on the int8 model's own inputs x_q (so each layer undoes what the layers before it lost),
           then the bias correction above for the rounding of W'.
  gptq     GPTQ rounding (gptq.py, act order): each weight is rounded up or down so that the layer's outputs
           on the int8 inputs move least, then the bias correction; needs per-channel weights and at least 2 d
           sampled inputs per layer (else plain rounding + bias correction). The same rounding with float
           activations, for converters that re-quantize float weights (TFLite): weight_compensation.py.

Layers are fitted one at a time in graph order on the int8 model as the layers before them already left
it (see `compensate`); staged_run.py runs each node once per sample on the way. Task-neutral:
the targets are layer outputs, not labels, so classifiers, detectors and sequence models are served
alike. Conv (any groups, strides, pads, dilations) and Gemm/MatMul with constant weights are fitted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import Dataset
from .activation_error import _expose
from .gptq import gptq_round
from .model_io import node_attr, ort_session
from .staged_run import StagedRunner

log = logging.getLogger(__name__)
COMPENSATIONS = ("none", "bias", "weights", "gptq")
POSITIONS_PER_SAMPLE = 128  # output positions sampled per layer and input (the Gram matrices converge fast)
RIDGE = 0.05  # lam as a share of the mean input energy: keeps W' near W where the inputs say little
INT8_MAX = 127.0  # ORT's symmetric int8 weights: scale = max|w| / 127 per output channel


@dataclass
class Layer:
    """One fitted node: where its weight/bias live and what it computes."""

    node: onnx.NodeProto
    weight: str
    bias: str | None
    kind: str  # conv | gemm
    groups: int = 1
    transposed: bool = False  # Gemm transB=1 stores W as (out, in)


@dataclass
class Stats:
    """Sufficient statistics of one layer over the samples: Gram matrices per group of [x_q; 1]."""

    gram: np.ndarray  # (groups, d+1, d+1)
    cross: np.ndarray  # (groups, d+1, out_per_group)
    count: int = 0


@dataclass
class CompensationReport:
    mode: str
    layers: int
    samples: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"compensation": self.mode, "layers_fitted": self.layers,
                "samples": self.samples, "skipped": self.skipped[:10]}


def fittable_layers(model: onnx.ModelProto) -> list[Layer]:
    """Conv/Gemm/MatMul nodes whose weight is an initializer (what ORT quantizes per channel)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if (n.op_type == "Conv" and len(n.input) >= 2 and n.input[1] in inits
                and node_attr(n, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            out.append(Layer(n, n.input[1], n.input[2] if len(n.input) > 2 and n.input[2] else None, "conv",
                             int(node_attr(n, "group", 1))))
        elif (n.op_type == "Gemm" and n.input[1] in inits and not node_attr(n, "transA", 0)
              and node_attr(n, "alpha", 1.0) == 1.0 and node_attr(n, "beta", 1.0) == 1.0):
            out.append(Layer(n, n.input[1], n.input[2] if len(n.input) > 2 and n.input[2] else None, "gemm",
                             transposed=bool(node_attr(n, "transB", 0))))
        elif n.op_type == "MatMul" and n.input[1] in inits:
            out.append(Layer(n, n.input[1], None, "gemm"))
    return out


def _positions(layer: Layer, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Output positions (flat spatial index, or row for Gemm/MatMul) sampled for one layer and input."""
    n = y.shape[2] * y.shape[3] if layer.kind == "conv" else int(np.prod(y.shape[:-1]))
    return np.sort(rng.choice(n, min(POSITIONS_PER_SAMPLE, n), replace=False))


def _targets(layer: Layer, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Float outputs at the sampled positions, as (P, groups, out_per_group)."""
    if layer.kind == "gemm":
        return y.reshape(-1, y.shape[-1])[pos][:, None, :]
    flat = y[0].reshape(y.shape[1], -1)[:, pos].T  # (P, cout)
    return flat.reshape(len(pos), layer.groups, -1)


def _inputs(layer: Layer, x: np.ndarray, y_shape: tuple, w_shape: tuple, pos: np.ndarray) -> np.ndarray:
    """The input patches each sampled output position reads, as (P, groups, d) in the weights' order."""
    if layer.kind == "gemm":
        return x.reshape(-1, x.shape[-1])[pos][:, None, :]
    n, g = layer.node, layer.groups
    kh, kw = w_shape[2], w_shape[3]
    sh, sw = node_attr(n, "strides", [1, 1])
    dh, dw = node_attr(n, "dilations", [1, 1])
    pads = node_attr(n, "pads", [0, 0, 0, 0])
    c, ow = x.shape[1], y_shape[3]
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oy, ox = pos // ow, pos % ow
    ky, kx = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    rows = oy[:, None] * sh + ky.ravel()[None, :]  # (P, kh*kw)
    cols = ox[:, None] * sw + kx.ravel()[None, :]
    patch = xp[:, rows, cols]  # (c, P, kh*kw)
    return patch.transpose(1, 0, 2).reshape(len(pos), g, (c // g) * kh * kw)


def _weight_matrix(w: np.ndarray, layer: Layer) -> np.ndarray:
    """Weights as (groups, d, out_per_group), matching _patches' input layout."""
    if layer.kind == "gemm":
        wm = w.T if layer.transposed else w  # (in, out)
        return wm[None]
    out = w.shape[0]
    g = layer.groups
    return w.reshape(g, out // g, -1).transpose(0, 2, 1)


def _from_matrix(wm: np.ndarray, layer: Layer, shape: tuple) -> np.ndarray:
    if layer.kind == "gemm":
        return (wm[0].T if layer.transposed else wm[0]).reshape(shape)
    return wm.transpose(0, 2, 1).reshape(shape)


def round_weights(wm: np.ndarray, per_channel: bool = True) -> np.ndarray:
    """ORT's symmetric int8 weight rounding (per output channel, or per tensor) on the (groups, d, out) layout."""
    absmax = np.abs(wm).max(axis=1, keepdims=True) if per_channel else np.abs(wm).max(keepdims=True)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0)
    return np.clip(np.round(wm / scale), -INT8_MAX, INT8_MAX) * scale


def _solve(stats: Stats, w0: np.ndarray, b0: np.ndarray, mode: str, per_channel: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """New (weights, bias) for one layer from its statistics; see the module docstring."""
    gram, cross = stats.gram / stats.count, stats.cross / stats.count
    d = w0.shape[1]
    if mode == "weights":
        energy = np.einsum("gii->g", gram[:, :d, :d]) / max(d, 1)
        reg = np.zeros_like(gram)
        diag = np.arange(d)
        reg[:, diag, diag] = RIDGE * energy[:, None] + 1e-8
        w_aug0 = np.concatenate([w0, b0[:, None, :]], axis=1)
        try:
            sol = np.linalg.solve(gram + reg, cross + reg @ w_aug0)
            w_new = sol[:, :d]
        except np.linalg.LinAlgError:
            w_new = w0
    elif mode == "gptq" and per_channel and stats.count >= 2 * d:
        w_new = gptq_round(w0, gram)  # already on the grid: round_weights below keeps it
    else:
        w_new = w0
    wq = round_weights(w_new, per_channel)
    mean_x = gram[:, d, :d]  # E[x_q] per group (the Gram row of the constant 1)
    mean_y = cross[:, d, :]  # E[y_float]
    b_new = mean_y - np.einsum("gd,gdo->go", mean_x, wq)
    return w_new, b_new


def _accumulate(stats: Stats, patch: np.ndarray, target: np.ndarray, means_only: bool = False) -> None:
    """Add one sample's positions. means_only (bias correction): only the rows of the constant 1, i.e. the sums
    of x_q and of y; the full d x d Gram matrices were 197 s of a YOLOv8n fit that bias mode never reads."""
    stats.count += len(patch)
    if means_only:
        stats.gram[:, -1, :-1] += patch.sum(axis=0)
        stats.gram[:, -1, -1] += len(patch)
        stats.cross[:, -1, :] += target.sum(axis=0)
        return
    aug = np.concatenate([patch, np.ones(patch.shape[:2] + (1,), patch.dtype)], axis=2).transpose(1, 0, 2)  # (g, P, d+1)
    # matmul (BLAS), not einsum: numpy's einsum loops in C without BLAS, 630 s of a YOLOv8n GPTQ fit (d up to 2305)
    stats.gram += np.matmul(aug.transpose(0, 2, 1), aug)
    stats.cross += np.matmul(aug.transpose(0, 2, 1), target.transpose(1, 0, 2))


@dataclass
class QdqParams:
    """Where one layer's int8 weight and int32 bias live in the QDQ model, and the scales they use."""

    x_scale: np.ndarray
    w_q: onnx.TensorProto
    w_scale: onnx.TensorProto
    w_axis: int
    b_q: onnx.TensorProto
    b_scale: onnx.TensorProto


def _qdq_params(qdq: onnx.ModelProto, node: onnx.NodeProto) -> QdqParams | None:
    """The DequantizeLinear inputs of a quantized Conv/Gemm (None when ORT left it float or unbiased)."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    inits = {i.name: i for i in qdq.graph.initializer}
    dq = [producer.get(t) for t in node.input[:3]]
    if len(dq) < 3 or any(d is None or d.op_type != "DequantizeLinear" for d in dq):
        return None
    if dq[0].input[1] not in inits or not all(t in inits for d in dq[1:] for t in d.input[:2]):
        return None
    return QdqParams(numpy_helper.to_array(inits[dq[0].input[1]]), inits[dq[1].input[0]], inits[dq[1].input[1]],
                     int(node_attr(dq[1], "axis", 1)), inits[dq[2].input[0]], inits[dq[2].input[1]])


def _write_qdq(params: QdqParams, w: np.ndarray, b: np.ndarray, out_axis: int) -> dict[str, np.ndarray]:
    """Quantize new float weights/bias exactly as ORT does (symmetric int8 per channel or per tensor;
    int32 bias at input scale x weight scale) into the QDQ model's initializers; returns the new values."""
    per_channel = int(np.prod(params.w_scale.dims)) > 1
    moved = np.moveaxis(w, out_axis, 0)
    absmax = np.abs(moved.reshape(len(moved), -1)).max(1) if per_channel else np.abs(w).max(keepdims=True).reshape(1)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[out_axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    b_scale = (params.x_scale.astype(np.float32) * scale).astype(np.float32)
    b_q = np.clip(np.round(b / np.broadcast_to(b_scale, b.shape).astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    values = {params.w_q.name: q, params.w_scale.name: scale.reshape(tuple(params.w_scale.dims)),
              params.b_q.name: b_q, params.b_scale.name: np.resize(b_scale, tuple(params.b_scale.dims)).astype(np.float32)}
    for tensor in (params.w_q, params.w_scale, params.b_q, params.b_scale):
        tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return values


def _float_targets(float_path: Path, layers: list[Layer], data: Dataset, workdir: Path, seed: int
                   ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]], dict[str, tuple]]:
    """One pass of the float model: per layer and sample, the sampled positions and float outputs there."""
    names = sorted({layer.node.output[0] for layer in layers})
    sess = ort_session(_expose(float_path, names, workdir / "reconstruct.float.onnx"))
    rng = np.random.default_rng(seed)
    pos: dict[str, list[np.ndarray]] = {layer.node.name: [] for layer in layers}
    tgt: dict[str, list[np.ndarray]] = {layer.node.name: [] for layer in layers}
    shapes: dict[str, tuple] = {}
    for i in range(len(data)):
        out = dict(zip(names, sess.run(names, data.sample(i))))
        for layer in layers:
            y = out[layer.node.output[0]]
            p = _positions(layer, y, rng)
            pos[layer.node.name].append(p)
            tgt[layer.node.name].append(_targets(layer, y, p).astype(np.float32))
            shapes[layer.node.name] = y.shape
    return pos, tgt, shapes


def initializers_as_inputs(model: onnx.ModelProto, names: set[str], targets: list[str], workdir: Path, name: str
                           ) -> tuple[StagedRunner, dict[str, np.ndarray]]:
    """A copy of `model` whose `names` initializers are graph inputs (fed per run, so new values take effect without
    rebuilding anything), run stage by stage up to each of `targets` in turn (staged_run.py); returns the runner
    and the initializers' values to feed. QDQ runs unfused here: the same values up to rounding."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    feeds, kept = {}, []
    for init in probe.graph.initializer:
        if init.name in names:
            feeds[init.name] = numpy_helper.to_array(init)
            probe.graph.input.append(onnx.helper.make_tensor_value_info(
                init.name, onnx.helper.np_dtype_to_tensor_dtype(feeds[init.name].dtype), list(init.dims)))
        else:
            kept.append(init)
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    return StagedRunner(probe, targets, workdir, name), feeds


def _probe(qmodel: onnx.ModelProto, targets: list[str], params_of: dict[str, QdqParams], workdir: Path):
    """The QDQ model with its int8 weights/biases as graph inputs, run up to each layer's input in turn."""
    names = {t.name for p in params_of.values() for t in (p.w_q, p.w_scale, p.b_q, p.b_scale)}
    return initializers_as_inputs(qmodel, names, targets, workdir, "reconstruct.stage")


def compensate(float_path: Path, qdq_path: Path, data: Dataset, mode: str, workdir: Path, seed: int = 0
               ) -> tuple[Path, Path, CompensationReport]:
    """Fit every layer, in graph order, to the int8 model's inputs as the layers before it already left them.

    Returns (compensated float model, compensated QDQ model, report). The QDQ model is patched in place
    (same nodes, same activation scales, weights re-quantized as ORT does), so layer l is fitted on what
    the compensated layers 0..l-1 really feed it: correcting every layer at once from one int8 run
    counts each upstream error twice (a measured collapse on MobileNetV2). The float model carries the
    same weights, so re-quantizing it with the same calibration ranges gives the same QDQ model (the
    mixed-precision search builds on it).
    """
    if mode not in COMPENSATIONS:
        raise ValueError(f"compensation {mode!r} is not one of {', '.join(COMPENSATIONS)}")
    fmodel = onnx.load(str(float_path))
    qmodel = onnx.load(str(qdq_path))
    q_nodes = {n.name: n for n in qmodel.graph.node}
    report = CompensationReport(mode, 0, len(data))
    layers = []
    for layer in fittable_layers(fmodel):
        qn = q_nodes.get(layer.node.name)
        if layer.bias and qn is not None and _qdq_params(qmodel, qn) is not None:
            layers.append(layer)
        else:
            report.skipped.append(layer.node.name)
    if mode == "none" or not layers:
        return float_path, qdq_path, report
    finits = {i.name: i for i in fmodel.graph.initializer}
    pos, tgt, out_shapes = _float_targets(float_path, layers, data, workdir, seed)
    params_of = {layer.node.name: _qdq_params(qmodel, q_nodes[layer.node.name]) for layer in layers}
    runner, feeds = _probe(qmodel, [q_nodes[layer.node.name].input[0] for layer in layers], params_of, workdir)
    current = workdir / f"reconstruct.{mode}.qdq.onnx"
    for k, layer in enumerate(layers):
        name = layer.node.name
        params = params_of[name]
        per_channel = int(np.prod(params.w_scale.dims)) > 1
        w = numpy_helper.to_array(finits[layer.weight]).astype(np.float64)
        b = numpy_helper.to_array(finits[layer.bias]).astype(np.float64)
        wm = _weight_matrix(w, layer)
        stats = None
        for i in range(len(data)):
            x = runner.run(k, i, {**data.sample(i), **feeds}).astype(np.float64)
            patch = _inputs(layer, x, out_shapes[name], w.shape, pos[name][i])
            if stats is None:
                g, d, o = patch.shape[1], patch.shape[2], wm.shape[2]
                stats = Stats(np.zeros((g, d + 1, d + 1)), np.zeros((g, d + 1, o)))
            _accumulate(stats, patch, tgt[name][i].astype(np.float64), means_only=mode == "bias")
        w_new, b_new = _solve(stats, wm, b.reshape(wm.shape[0], wm.shape[2]), mode, per_channel)
        w_full = _from_matrix(w_new, layer, w.shape).astype(np.float32)
        b_full = b_new.reshape(-1).astype(np.float32)
        finits[layer.weight].CopyFrom(numpy_helper.from_array(w_full, layer.weight))
        finits[layer.bias].CopyFrom(numpy_helper.from_array(b_full, layer.bias))
        feeds.update(_write_qdq(params, w_full, b_full, params.w_axis))
        report.layers = k + 1
    onnx.save_model(qmodel, str(current), save_as_external_data=False)
    out = workdir / f"float.compensated.{mode}.onnx"
    onnx.save_model(fmodel, str(out), save_as_external_data=False)
    log.info("compensation %s: %d layers fitted in order on %d samples", mode, report.layers, len(data))
    return out, current, report
