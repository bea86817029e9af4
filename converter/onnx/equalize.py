"""Cross-layer equalization (CLE) of the float ONNX graph before int8 calibration, with data-aware scales.

Depthwise-separable nets (MobileNet, EfficientNet-Lite) lose their answers under int8 because the channels
of one tensor span very different ranges: the per-tensor activation scale (ORT's uint8 activations) rounds
the weak channels away. CLE (Nagel et al. 2019, "DFQ"; AIMET's and Quark's `cross_layer_equalization`)
uses relu(x / s) = relu(x) / s for s > 0: for a pair Conv A -> [Relu | Clip(0, hi)] -> Conv B, output
channel i of A is divided by s_i and input channel i of B multiplied by s_i, the float function unchanged.

DFQ picks s_i from weight ranges and swaps ReLU6 for ReLU, since one Clip cannot hold a per-channel cap of
6 / s_i. Measured on torchvision's MobileNetV2 and real photos, that swap alone changed float's top-1 on 10 %
of inputs, and with per-channel int8 weights (what the profiles use) the weight ranges hardly matter. So the
scales here come from the *activations* (calibration data): s_i = (m_i / (HEADROOM * T)) ** alpha, capped at
1, where m_i is channel i's largest activation and T the tensor's. Weak channels are scaled up towards the
tensor's range, strong ones stay. Because s_i <= 1 and m_i / s_i <= T <= hi, a channel that never reached
the Clip's cap on the calibration data never reaches it after scaling (HEADROOM leaves 2x for unseen
inputs): ReLU6 stays ReLU6 and the model stays float-exact. No channel's negative side (cut by the
activation, but quantized when ORT leaves a Conv's output unfused) may grow past the widest one's.
alpha = 1 when B is depthwise (per-channel weights make its scaling free), 0.5 otherwise (B's input
columns shrink by s_i: the SmoothQuant balance).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import Dataset
from .model_io import node_attr

log = logging.getLogger(__name__)
HEADROOM = 0.5  # scaled-up channels reach at most half the tensor's range: room for inputs calibration never saw
ALPHA_DEPTHWISE, ALPHA_DENSE = 1.0, 0.5
MIN_SCALE = 1e-3  # a channel is never scaled up by more than 1000x


@dataclass
class Pair:
    """Conv a -> (optional Relu / Clip(0, hi)) -> Conv b, the tensor between them read by nothing else."""

    a: onnx.NodeProto
    act: onnx.NodeProto | None
    b: onnx.NodeProto


@dataclass
class EqualizationReport:
    pairs: int = 0
    channels_scaled: int = 0
    range_spread_before: float = 0.0  # median over pairs of max/median channel activation range
    range_spread_after: float = 0.0

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "channels_scaled": self.channels_scaled,
                "activation_range_spread": {"before": round(self.range_spread_before, 2),
                                            "after": round(self.range_spread_after, 2)}}


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None


def _homogeneous(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Relu, or a Clip whose lower bound is 0 (channels are kept below its upper bound: see scales_for)."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    if len(node.input) > 1 and node.input[1]:
        lo = _const(inits, node.input[1])
        return lo is not None and lo.size == 1 and float(lo) == 0.0
    return float(node_attr(node, "min", -np.inf)) == 0.0


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Conv pairs CLE may rescale: constant weights used by one node, a single-use tensor between them."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for t in n.input:
            consumers[t].append(n)
    outputs = {o.name for o in g.output}

    def single(tensor: str) -> onnx.NodeProto | None:
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in outputs else None

    def conv_ok(n: onnx.NodeProto) -> bool:
        return (n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits and len(consumers[n.input[1]]) == 1
                and (len(n.input) < 3 or not n.input[2] or (n.input[2] in inits and len(consumers[n.input[2]]) == 1)))

    pairs = []
    for a in g.node:
        if not conv_ok(a):
            continue
        nxt, act = single(a.output[0]), None
        if nxt is not None and _homogeneous(nxt, inits):
            act, nxt = nxt, single(nxt.output[0])
        if nxt is not None and conv_ok(nxt) and nxt.input[0] == (act or a).output[0]:
            pairs.append(Pair(a, act, nxt))
    return pairs


def channel_maxima(model_path: Path, pairs: list[Pair], data: Dataset, workdir: Path) -> dict[str, np.ndarray]:
    """Per pair, conv A's output (before the activation) over the data: each channel's largest value and
    largest negative magnitude, as a (2, channels) array keyed by A's output name (one ORT session)."""
    from .activation_error import _expose
    from .model_io import ort_session

    names = sorted({p.a.output[0] for p in pairs})
    sess = ort_session(_expose(model_path, names, workdir / "equalize.exposed.onnx"))
    out: dict[str, np.ndarray] = {}
    for i in range(len(data)):
        for n, v in zip(names, sess.run(names, data.sample(i))):
            axes = tuple(a for a in range(v.ndim) if a != 1)
            m = np.stack([np.asarray(v, np.float64).max(axis=axes), -np.asarray(v, np.float64).min(axis=axes)])
            out[n] = m if n not in out else np.maximum(out[n], m)
    return out


def _cap(p: Pair, inits: dict[str, onnx.TensorProto]) -> float:
    if p.act is None or p.act.op_type == "Relu":
        return np.inf
    if len(p.act.input) > 2 and p.act.input[2]:
        hi = _const(inits, p.act.input[2])
        return float(hi) if hi is not None else np.inf
    return float(node_attr(p.act, "max", np.inf))


def scales_for(p: Pair, extremes: np.ndarray, cap: float) -> np.ndarray:
    """s_i (<= 1) that lift channel i's range towards HEADROOM x the tensor's, keeping every channel below `cap`
    and no channel's negative side (before the activation: what an unfused Conv output quantizes) wider than
    the widest one's."""
    m, neg = np.maximum(extremes[0], 0.0), np.maximum(extremes[1], 0.0)
    top = min(float(m.max()), cap)
    if top <= 0:
        return np.ones_like(m)
    depthwise = int(node_attr(p.b, "group", 1)) == len(m) and len(m) > 1
    alpha = ALPHA_DEPTHWISE if depthwise else ALPHA_DENSE
    s = np.ones_like(m)
    live = m > 0
    s[live] = np.clip((m[live] / (HEADROOM * top)) ** alpha, MIN_SCALE, 1.0)
    if neg.max() > 0:
        s = np.maximum(s, np.minimum(neg / neg.max(), 1.0))
    return s


def equalize(model: onnx.ModelProto, maxima: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, EqualizationReport]:
    """Rescale every pair of `find_pairs(model)` in place by its activation extremes (`channel_maxima`)."""
    inits = {i.name: i for i in model.graph.initializer}
    pairs = [p for p in find_pairs(model) if p.a.output[0] in maxima]
    report = EqualizationReport(pairs=len(pairs))
    spread_before, spread_after = [], []
    for p in pairs:
        extremes = maxima[p.a.output[0]]
        m = np.maximum(extremes[0], 0.0)
        wa, wb = _const(inits, p.a.input[1]), _const(inits, p.b.input[1])
        groups = int(node_attr(p.b, "group", 1))
        if wa is None or wb is None or len(m) != len(wa) or len(m) != wb.shape[1] * groups:
            continue
        s = scales_for(p, extremes, _cap(p, inits))
        wa /= s.reshape(-1, *([1] * (wa.ndim - 1)))
        cpg, opg = wb.shape[1], wb.shape[0] // groups
        for i in np.flatnonzero(s != 1.0):
            wb[(i // cpg) * opg:(i // cpg + 1) * opg, i % cpg] *= s[i]
        inits[p.a.input[1]].CopyFrom(numpy_helper.from_array(wa.astype(np.float32), p.a.input[1]))
        inits[p.b.input[1]].CopyFrom(numpy_helper.from_array(wb.astype(np.float32), p.b.input[1]))
        if len(p.a.input) > 2 and p.a.input[2]:
            b = _const(inits, p.a.input[2]) / s
            inits[p.a.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), p.a.input[2]))
        report.channels_scaled += int((s < 1.0).sum())
        live = m[m > 0]
        if len(live):
            spread_before.append(float(live.max() / np.median(live)))
            after = live / s[m > 0]
            spread_after.append(float(after.max() / np.median(after)))
    report.range_spread_before = float(np.median(spread_before)) if spread_before else 1.0
    report.range_spread_after = float(np.median(spread_after)) if spread_after else 1.0
    log.info("cross-layer equalization: %d conv pairs, %d channels scaled up, activation range spread %.1f -> %.1f",
             report.pairs, report.channels_scaled, report.range_spread_before, report.range_spread_after)
    return model, report
