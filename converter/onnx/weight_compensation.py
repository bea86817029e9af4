"""Weight-only compensation of a float ONNX model: GPTQ rounding + bias correction with float activations.

The result is a *float* model whose Conv/Gemm/MatMul weights already sit on the symmetric per-channel int8 grid
(each channel's largest weight at +-127 x scale) and whose biases absorb the mean shift the rounding leaves. Any
int8 quantizer that derives per-channel scales as max |w| / 127 (ONNX Runtime's, TFLite's converter behind
onnx2tf) rounds these weights back onto exactly the same integers, so the compensation survives a converter that
re-quantizes from float weights. Two uses: the benchmark's weight-only reference row (how much of float's answers
int8 weights can keep once compensated), and the TFLite path, whose int8 weights are rounded by the TFLite
converter from the float model onnx2tf is given.

Layers are fitted one at a time in graph order, each on the inputs the already-compensated layers before it
produce (activations float), against the float model's outputs at sampled positions (reconstruct.py's helpers).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import Dataset
from .activation_error import _expose
from .gptq import gptq_round
from .model_io import ort_session
from .reconstruct import (CompensationReport, Stats, _accumulate, _float_targets, _from_matrix, _inputs, _weight_matrix,
                          _positions, _targets, fittable_layers, initializers_as_inputs, round_weights)

log = logging.getLogger(__name__)


def _one_pass_stats(float_path: Path, layers: list, data: Dataset, workdir: Path, seed: int) -> dict[str, Stats]:
    """Per layer, the Gram matrices of [x_f; 1] and cross moments with y_f at sampled positions, one run per sample."""
    names = sorted({ly.node.input[0] for ly in layers} | {ly.node.output[0] for ly in layers})
    sess = ort_session(_expose(float_path, names, workdir / "wcomp.exposed.onnx"))
    weights = {i.name: i.dims for i in onnx.load(str(float_path), load_external_data=False).graph.initializer}
    rng = np.random.default_rng(seed)
    stats: dict[str, Stats] = {}
    for i in range(len(data)):
        got = dict(zip(names, sess.run(names, data.sample(i))))
        for layer in layers:
            y, x = got[layer.node.output[0]], got[layer.node.input[0]].astype(np.float64)
            pos = _positions(layer, y, rng)
            patch = _inputs(layer, x, y.shape, tuple(weights[layer.weight]), pos)
            if layer.node.name not in stats:
                g, d, o = patch.shape[1], patch.shape[2], _targets(layer, y, pos).shape[2]
                stats[layer.node.name] = Stats(np.zeros((g, d + 1, d + 1)), np.zeros((g, d + 1, o)))
            _accumulate(stats[layer.node.name], patch, _targets(layer, y, pos).astype(np.float64))
    return stats


def compensate_weights_only(float_path: Path, data: Dataset, workdir: Path, out: Path, seed: int = 0,
                            gptq: bool = True, sequential: bool = False) -> tuple[Path, CompensationReport]:
    """GPTQ-round every fittable layer's weights onto the per-channel int8 grid and correct its bias, in order
    (gptq=False: nearest rounding + the same bias correction, the reference GPTQ is measured against). Layers
    without a bias input (MatMul, bias-free Conv) are rounded without bias correction.

    sequential=False (default): every layer's statistics come from one float run per sample (inputs x_f), so each
    layer corrects its own rounding only (b' = b + (W - Wq) E[x_f]): linear in the layer count. sequential=True fits
    layer l on what the compensated layers 0..l-1 feed it (staged_run.py: each node runs once per sample, not once per
    layer and sample as in the whole-model runs that took 6 min on MobileNetV2 under load)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(float_path))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):  # layers are keyed by node name: name the unnamed
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    float_path = workdir / "wcomp.src.onnx"
    onnx.save_model(model, str(float_path), save_as_external_data=False)
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    layers = [ly for ly in fittable_layers(model) if ranks[ly.weight] == (4 if ly.kind == "conv" else 2)]
    report = CompensationReport("gptq-weights-only" if gptq else "nearest-weights-only", 0, len(data))
    if not layers:
        onnx.save_model(model, str(out), save_as_external_data=False)
        return out, report
    stats = _one_pass_stats(float_path, layers, data, workdir, seed) if not sequential else None
    names = {ly.weight for ly in layers} | {ly.bias for ly in layers if ly.bias}
    pos, tgt, shapes = _float_targets(float_path, layers, data, workdir, seed) if sequential else ({}, {}, {})
    runner, feeds = initializers_as_inputs(model, names, [ly.node.input[0] for ly in layers], workdir, "wcomp.stage")
    for k, layer in enumerate(layers):
        name = layer.node.name
        w = feeds[layer.weight].astype(np.float64)
        wm = _weight_matrix(w, layer)
        st = stats[name] if stats is not None else None
        for i in range(len(data) if st is None else 0):
            x = runner.run(k, i, {**data.sample(i), **feeds}).astype(np.float64)
            patch = _inputs(layer, x, shapes[name], w.shape, pos[name][i])
            if st is None:
                st = Stats(np.zeros((patch.shape[1], patch.shape[2] + 1, patch.shape[2] + 1)),
                           np.zeros((patch.shape[1], patch.shape[2] + 1, wm.shape[2])))
            _accumulate(st, patch, tgt[name][i].astype(np.float64))
        gram, cross = st.gram / st.count, st.cross / st.count
        d = wm.shape[1]
        wq = gptq_round(wm, gram) if gptq else round_weights(wm)
        feeds[layer.weight] = _from_matrix(wq, layer, w.shape).astype(np.float32)
        if layer.bias:  # E[y_float] - E[x] . Wq: the mean shift of the rounding (in order: and of upstream rounding)
            b = cross[:, d, :] - np.einsum("gd,gdo->go", gram[:, d, :d], wq)
            feeds[layer.bias] = b.reshape(-1).astype(np.float32)
        report.layers = k + 1
    for init in model.graph.initializer:
        if init.name in feeds:
            init.CopyFrom(numpy_helper.from_array(feeds[init.name], init.name))
    onnx.save_model(model, str(out), save_as_external_data=False)
    log.info("weight-only GPTQ compensation: %d layers on %d samples", report.layers, len(data))
    return out, report
