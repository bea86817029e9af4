"""Exact float graph rewrites that remove quantization points before int8 (QDQ) quantization.

Exported models (PaddlePaddle -> ONNX PP-OCR, many mobile nets) keep "learnable affine" blocks as
separate Mul/Add-by-constant nodes around each conv and spell HardSwish as Add/Clip/Mul/Div. ORT's QDQ
quantizer re-quantizes the activations after every one of those nodes, which costs accuracy and time.
  Conv -> Mul(c) -> Add(c)         fold into the conv's weights and bias     (per-tensor or per-channel c)
  Mul(c) -> Add(c) -> Conv (no pad) fold into the following conv              (scalar c)
  x * Clip(x + 3, 0, 6) / 6        HardSwish (opset >= 14) or x * HardSigmoid(x) (4 nodes -> 1 or 2)
All rewrites keep the float outputs (up to float rounding).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .model_io import node_attr

log = logging.getLogger(__name__)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.g = model, model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        # Work on a plain list of node copies: protobuf wrappers are not stable objects, so id()-based
        # bookkeeping on graph.node itself could mix nodes up.
        self.nodes: list[onnx.NodeProto] = []
        for n in self.g.node:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            self.nodes.append(c)
        self.removed: set[int] = set()
        self._n = 0
        self.opset = 0
        self.refresh()

    def refresh(self) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in self.nodes:
            if id(n) in self.removed:
                continue
            for t in n.input:
                self.consumers[t].append(n)
            for t in n.output:
                self.producer[t] = n

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output (exporters emit both), else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name]).astype(np.float64)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
        return None

    def add_init(self, base: str, value: np.ndarray) -> str:
        self._n += 1
        name = f"{base}_folded{self._n}"
        self.g.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.inits[name] = self.g.initializer[-1]
        return name

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        c = self.consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in self.outputs else None

    def affine_const(self, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
        """(data input, constant) of a Mul/Add with exactly one constant input."""
        if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
            return None
        a, b = node.input
        ca, cb = self.const(a), self.const(b)
        if (ca is None) == (cb is None):
            return None
        return (b, ca) if ca is not None else (a, cb)

    def finish(self) -> None:
        keep = [n for n in self.nodes if id(n) not in self.removed]
        used = {t for n in keep for t in n.input} | self.outputs
        keep = [n for n in keep if n.op_type != "Constant" or any(t in used for t in n.output)]
        del self.g.node[:]
        self.g.node.extend(keep)
        unused = [i for i in self.g.initializer if i.name not in used]
        for i in unused:
            self.g.initializer.remove(i)


def _per_channel(c: np.ndarray, channels: int) -> np.ndarray | None:
    """c as a (channels,) vector when it broadcasts per output channel of an NCHW tensor, else None."""
    if c.size == 1:
        return np.full(channels, float(c.ravel()[0]))
    shape = [int(d) for d in c.shape]
    if c.size == channels and len(shape) >= 3 and shape[-3] == channels and all(d == 1 for d in shape[-2:]):
        return c.ravel()
    return None


def _fold_into_convs(gr: _Graph, fold_one: Callable[..., tuple[np.ndarray, np.ndarray] | None],
                     unpadded_only: bool = False) -> int:
    """For each conv with constant weights, apply `fold_one(gr, conv, w, b) -> (w, b)` until it returns None."""
    count = 0
    for conv in list(gr.nodes):
        if conv.op_type != "Conv" or id(conv) in gr.removed or len(conv.input) < 2:
            continue
        if unpadded_only:
            pads = node_attr(conv, "pads", [0, 0, 0, 0])
            if any(pads) or node_attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                continue
        w = gr.const(conv.input[1])
        if w is None:
            continue
        b = gr.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        if b is None:
            continue
        changed = False
        while (folded := fold_one(gr, conv, w, b)) is not None:
            w, b = folded
            gr.refresh()
            changed = True
            count += 1
        if changed:
            _store_conv_params(gr, conv, w, b)
    return count


def _fold_next(gr: _Graph, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Conv -> Mul(c)/Add(c) (per-tensor or per-channel c): the op after the conv folded into its weights and bias."""
    nxt = gr.single_consumer(conv.output[0])
    found = gr.affine_const(nxt) if nxt is not None else None
    vec = _per_channel(found[1], w.shape[0]) if found else None
    if vec is None:
        return None
    if nxt.op_type == "Mul":
        w, b = w * vec.reshape(-1, *([1] * (w.ndim - 1))), b * vec
    else:
        b = b + vec
    conv.output[0] = nxt.output[0]
    gr.removed.add(id(nxt))
    return w, b


def _fold_previous(gr: _Graph, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mul(scalar)/Add(scalar) -> Conv without padding: the op before the conv folded into it."""
    prev = gr.producer.get(conv.input[0])
    found = gr.affine_const(prev) if prev is not None else None
    if not found or found[1].size != 1 or gr.single_consumer(conv.input[0]) is not conv:
        return None
    c = float(found[1].ravel()[0])
    if prev.op_type == "Mul":
        w = w * c
    else:  # conv(x + c) = conv(x) + c * sum of each output channel's weights (no padding)
        b = b + c * w.reshape(w.shape[0], -1).sum(1)
    conv.input[0] = found[0]
    gr.removed.add(id(prev))
    return w, b


def _fold_forward(gr: _Graph) -> int:
    """Conv -> Mul(c)/Add(c) chains into the conv."""
    return _fold_into_convs(gr, _fold_next)


def _fold_backward(gr: _Graph) -> int:
    """Mul(scalar) -> Add(scalar) -> Conv without padding: fold into the conv."""
    return _fold_into_convs(gr, _fold_previous, unpadded_only=True)


def _store_conv_params(gr: "_Graph", conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> None:
    """Point the conv at new weight and bias initializers (the old ones may be shared)."""
    conv.input[1] = gr.add_init(conv.input[1], w)
    if len(conv.input) > 2:
        conv.input[2] = gr.add_init(conv.input[1] + "_b", b)
    else:
        conv.input.append(gr.add_init(conv.input[1] + "_b", b))


def _fuse_hardswish(gr: _Graph) -> int:
    """x * Clip(x + 3, 0, 6) / 6 (either multiplication order) -> HardSwish(x)."""
    count = 0
    for add in list(gr.nodes):
        if id(add) in gr.removed:
            continue
        found = gr.affine_const(add)
        if not found or add.op_type != "Add" or found[1].size != 1 or float(found[1].ravel()[0]) != 3.0:
            continue
        x = found[0]
        clip = gr.single_consumer(add.output[0])
        if clip is None or clip.op_type != "Clip" or len(clip.input) < 3:
            continue
        lo, hi = gr.const(clip.input[1]), gr.const(clip.input[2])
        if lo is None or hi is None or float(lo.ravel()[0]) != 0.0 or float(hi.ravel()[0]) != 6.0:
            continue
        mul = gr.single_consumer(clip.output[0])
        if mul is None or mul.op_type != "Mul" or set(mul.input) != {x, clip.output[0]}:
            continue
        div = gr.single_consumer(mul.output[0])
        if div is None or div.op_type != "Div" or div.input[0] != mul.output[0]:
            continue
        six = gr.const(div.input[1])
        if six is None or six.size != 1 or float(six.ravel()[0]) != 6.0:
            continue
        idx = next(i for i, n in enumerate(gr.nodes) if n is div)
        if gr.opset >= 14:
            gr.nodes.insert(idx, helper.make_node("HardSwish", [x], [div.output[0]], name=f"{add.name}_hardswish"))
        else:  # HardSwish(x) = x * HardSigmoid(x; 1/6, 0.5)
            gate = f"{add.name}_hardsigmoid_out"
            gr.nodes.insert(idx, helper.make_node("Mul", [x, gate], [div.output[0]], name=f"{add.name}_hardswish_mul"))
            gr.nodes.insert(idx, helper.make_node("HardSigmoid", [x], [gate], name=f"{add.name}_hardsigmoid",
                                                   alpha=1.0 / 6.0, beta=0.5))
        gr.removed.update({id(add), id(clip), id(mul), id(div)})
        gr.refresh()
        count += 1
    return count


def fold_for_quantization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Apply the rewrites; returns the model and how many of each were made."""
    gr = _Graph(model)
    gr.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    counts = {"affine_into_conv": _fold_forward(gr), "affine_into_next_conv": _fold_backward(gr),
              "hardswish": _fuse_hardswish(gr)}
    gr.finish()
    return model, counts
