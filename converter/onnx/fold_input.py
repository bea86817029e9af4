"""Fold an image model's input normalisation into its first convolution, so int8 sees whole grey levels.

An image reaches the model as whole grey levels (0..255) mapped by the preprocessing to (pixel * scale - mean) / std.
Int8 QDQ then quantizes that normalised input on a grid of its own, which is not the grey-level grid: every pixel
moves by up to half a grey level, and ImageNet classifiers change 12-14 % of their answers on real photos under
+-1 grey level of noise (scripts/bench_quant_real.py, reference rows). Folded, the model takes grey levels and its
first conv carries the affine map: W' = W * scale / std per input channel, b' = b - sum(W * mean / std). The input
is then quantized with scale 1 and zero point 0, which rounds nothing.

Zero padding changes meaning: the normalised model pads with 0 = the mean pixel, the folded one would pad with
black. The fold keeps the border exact with an explicit Pad of the mean pixel (one value per model: Pad's
constant; per channel: Pad with 0 plus a constant border image), and the conv's own padding set to 0.
Per-channel constant Sub/Div/Mul/Add nodes at the graph input (normalisation exported inside the model) fold in
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

PIXEL_MAX = 255.0
GRID_TOLERANCE = 0.02  # grey levels: data mapped back to pixels must sit this close to whole values


class NotFoldable(Exception):
    """The model or its data do not have the shape the fold needs; the message says why."""


@dataclass
class InputFold:
    """What the fold did: the pixel-domain tensors (quantized with scale 1, zero point 0) and the affine map."""

    input: str
    conv: str  # the first conv's output tensor (node names may be empty before prepare_for_qdq)
    scale: list[float]  # the data given = scale * pixel + offset, per channel (the preprocessing; to_pixels undoes it)
    offset: list[float]
    border: str  # none (no padding, or padding with 0 = black) | pad (one fill value) | pad+border (per channel)
    fill: list[float] = field(default_factory=list)  # the pixel that normalises to 0 per channel (the mean pixel)
    graph_nodes_folded: list[str] = field(default_factory=list)  # normalisation nodes taken out of the graph
    pixel_tensors: list[str] = field(default_factory=list)
    weight: str = ""  # the folded conv's weight initializer

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "conv": self.conv, "scale": self.scale, "offset": self.offset,
                "border": self.border, "fill": self.fill, "graph_nodes_folded": self.graph_nodes_folded,
                "input_quantization": "uint8, scale 1, zero point 0 (whole grey levels, exact)"}


def pixel_affine(scale: float, mean: list[float], std: list[float], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per channel with normalised = a * pixel + b, for the agent's (pixel * scale - mean) / std."""
    m = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
    s = np.broadcast_to(np.asarray(std, np.float64), (channels,))
    return scale / s, -m / s


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i).astype(np.float64)
    for n in model.graph.node:
        if n.op_type == "Constant" and name in n.output and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t).astype(np.float64)
    return None


def _per_channel(c: np.ndarray, channels: int) -> np.ndarray | None:
    if c.size == 1:
        return np.full(channels, float(c.ravel()[0]))
    shape = [int(d) for d in c.shape]
    if c.size == channels and len(shape) >= 3 and shape[-3] == channels and shape[-2:] == [1, 1]:
        return c.ravel().astype(np.float64)
    return None


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _graph_normalisation(model: onnx.ModelProto, x: str, a: np.ndarray, b: np.ndarray
                         ) -> tuple[str, np.ndarray, np.ndarray, list[onnx.NodeProto]]:
    """Walk Sub/Div/Mul/Add-by-a-per-channel-constant nodes from the input, composing them into (a, b)."""
    channels, tensor, chain = len(a), x, []
    outputs = {o.name for o in model.graph.output}
    while True:
        users = _consumers(model, tensor)
        if len(users) != 1 or tensor in outputs or users[0].op_type not in ("Sub", "Div", "Mul", "Add"):
            return tensor, a, b, chain
        node = users[0]
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        c = _const(model, other)
        vec = _per_channel(c, channels) if c is not None else None
        if vec is None or (node.op_type in ("Sub", "Div") and node.input[0] != tensor):
            return tensor, a, b, chain
        if node.op_type == "Sub":
            b = b - vec
        elif node.op_type == "Add":
            b = b + vec
        elif node.op_type == "Mul":
            a, b = a * vec, b * vec
        else:
            a, b = a / vec, b / vec
        chain.append(node)
        tensor = node.output[0]


def fold_input(model: onnx.ModelProto, a: np.ndarray, b: np.ndarray, border_image: bool = False
               ) -> tuple[onnx.ModelProto, InputFold]:
    """The model taking grey levels (pixel = (normalised - b) / a) instead of normalised values; raises NotFoldable.
    border_image: pad with 0 plus a constant border image even when one fill value serves every channel (TFLite: a Pad
    with a nonzero constant becomes PADV2, whose int8 kernel XNNPACK does not take, so it ran float; a zero PAD pads
    int8 with the zero point, grey level 0, and the border ADD is int8 too: exact on scale 1)."""
    g = model.graph
    initializer_names = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise NotFoldable(f"the model has {len(inputs)} inputs (the fold needs one image input)")
    x = inputs[0].name
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != len(a):
        raise NotFoldable(f"input {x} is not NCHW with {len(a)} channels (shape {dims})")
    data_a, data_b = a, b  # what the data went through (the preprocessing): to_pixels undoes this part
    tensor, a, b, chain = _graph_normalisation(model, x, a, b)
    users = _consumers(model, tensor)
    extra_pads = [0, 0, 0, 0]
    if len(users) == 1 and users[0].op_type == "Pad":  # TF-style 'same' padding exported as Pad(0) -> Conv
        extra_pads = _zero_pad(model, users[0])
        chain.append(users[0])
        tensor = users[0].output[0]
        users = _consumers(model, tensor)
    if len(users) != 1 or users[0].op_type != "Conv" or tensor in {o.name for o in g.output}:
        raise NotFoldable(f"the input feeds {[u.op_type for u in users]}, not one Conv")
    conv = users[0]
    w = _const(model, conv.input[1])
    if w is None or int(_attr(conv, "group", 1)) != 1 or w.ndim != 4 or w.shape[1] != len(a):
        raise NotFoldable(f"first conv {conv.name} has no constant dense 2-D weights")
    if not np.all(np.isfinite(a)) or np.any(a == 0):
        raise NotFoldable("the normalisation's scale is zero or not finite")
    bias = _const(model, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
    if bias is None:
        raise NotFoldable(f"first conv {conv.name} has a computed bias")
    auto_pad = _attr(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NotFoldable(f"first conv {conv.name} uses auto_pad {auto_pad}")
    pads = [int(p) for p in _attr(conv, "pads", [0, 0, 0, 0])] if auto_pad == "NOTSET" else [0, 0, 0, 0]
    pads = [p + e for p, e in zip(pads, extra_pads)]
    fill = -b / a  # the pixel whose normalised value is 0: what the original padding stands for
    w_new = w * a.reshape(1, -1, 1, 1)
    b_new = bias + (w * b.reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
    conv_out = conv.output[0]
    chain_names = [n.name or n.op_type for n in chain]
    for n in chain:
        g.node.remove(n)
    conv = next(n for n in g.node if n.op_type == "Conv" and n.output[0] == conv_out)  # fresh reference after removal
    conv_input = x
    new_nodes: list[onnx.NodeProto] = []
    border = "none"
    if any(pads) and float(np.abs(fill).max()) > 1e-9:  # fill 0 (no mean): the conv's own zero padding is right
        conv_input, border, new_nodes = _explicit_border(g, x, dims, pads, fill, border_image)
        kept = [attr for attr in conv.attribute if attr.name not in ("pads", "auto_pad")]
        del conv.attribute[:]
        conv.attribute.extend(kept)  # no padding left in the conv: the Pad above holds it
    wname, bname = f"{conv.input[1]}_pixels", f"{conv.name or 'conv'}_bias_pixels"
    g.initializer.extend([numpy_helper.from_array(w_new.astype(np.float32), wname),
                          numpy_helper.from_array(b_new.astype(np.float32), bname)])
    conv.input[0], conv.input[1] = conv_input, wname
    if len(conv.input) > 2:
        conv.input[2] = bname
    else:
        conv.input.append(bname)
    idx = next(i for i, n in enumerate(g.node) if n.op_type == "Conv" and n.output[0] == conv_out)
    for k, n in enumerate(new_nodes):
        g.node.insert(idx + k, n)
    _drop_unused_initializers(model)
    pixel_tensors = [x] + [n.output[0] for n in new_nodes]
    return model, InputFold(x, conv_out, [float(v) for v in data_a], [float(v) for v in data_b], border,
                            [float(v) for v in fill], chain_names,
                            pixel_tensors, wname)


def _explicit_border(g: onnx.GraphProto, x: str, dims: list[int], pads: list[int], fill: np.ndarray,
                     border_image: bool = False) -> tuple[str, str, list[onnx.NodeProto]]:
    """Pad the grey-level input with the mean pixel, as the normalised model's zero padding meant: Pad's constant
    when one value serves every channel (unless border_image and the size is fixed), else Pad 0 plus a constant
    border image. (conv input, kind, new nodes)"""
    fixed = all(d > 0 for d in dims[2:])
    if not fixed and not np.allclose(fill, fill[0]):
        raise NotFoldable("per-channel border fill needs a fixed input height and width")
    top, left, bottom, right = pads
    pad_spec = helper.make_tensor(f"{x}_fold_pads", onnx.TensorProto.INT64, [8], [0, 0, top, left, 0, 0, bottom, right])
    g.initializer.append(pad_spec)
    same = bool(np.allclose(fill, fill[0], rtol=0, atol=1e-6)) and not (border_image and fixed)
    g.initializer.append(numpy_helper.from_array(np.array(float(fill[0]) if same else 0.0, np.float32), f"{x}_fold_fill"))
    padded = f"{x}_fold_padded"
    nodes = [helper.make_node("Pad", [x, pad_spec.name, f"{x}_fold_fill"], [padded], name=f"{x}_fold_pad", mode="constant")]
    if same:
        return padded, "pad", nodes
    h, wd = dims[2] + top + bottom, dims[3] + left + right
    img = np.zeros((1, len(fill), h, wd), np.float32)
    mask = np.ones((h, wd), bool)
    mask[top:h - bottom, left:wd - right] = False
    img[0][:, mask] = fill.astype(np.float32)[:, None]
    g.initializer.append(numpy_helper.from_array(img, f"{x}_fold_border"))
    nodes.append(helper.make_node("Add", [padded, f"{x}_fold_border"], [f"{x}_fold_bordered"], name=f"{x}_fold_border_add"))
    return f"{x}_fold_bordered", "pad+border", nodes


def _zero_pad(model: onnx.ModelProto, pad: onnx.NodeProto) -> list[int]:
    """[top, left, bottom, right] of a constant Pad with value 0 on height and width only; else NotFoldable."""
    mode = _attr(pad, "mode", b"constant")
    pads = _const(model, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
    value = _const(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
    if len(pad.input) > 3 and pad.input[3]:
        raise NotFoldable("a Pad with axes before the first conv")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or pads is None or value is None \
            or pads.size != 8 or float(np.abs(value).max()) != 0.0:
        raise NotFoldable("the input feeds a Pad that is not zero padding of height and width")
    p = [int(v) for v in pads]
    if p[0] or p[1] or p[4] or p[5] or min(p) < 0:
        raise NotFoldable("the input's Pad pads more than height and width")
    return [p[2], p[3], p[6], p[7]]


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    for i in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(i)


def to_pixels(x: np.ndarray, a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> np.ndarray:
    """Normalised NCHW samples back to grey levels, rounded; raises NotFoldable when they are not whole grey levels
    in 0..255 (the data was normalised some other way than the preprocessing declares)."""
    a_, b_ = np.asarray(a, np.float64).reshape(1, -1, 1, 1), np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    pixels = (x.astype(np.float64) - b_) / a_
    off = float(np.abs(pixels - np.round(pixels)).max()) if pixels.size else 0.0
    if off > GRID_TOLERANCE or pixels.min() < -GRID_TOLERANCE or pixels.max() > PIXEL_MAX + GRID_TOLERANCE:
        raise NotFoldable(f"the data are not the declared preprocessing's grey levels (up to {off:.3f} off a whole "
                          f"level, range {pixels.min():.2f}..{pixels.max():.2f}): check --scale/--mean/--std")
    return np.round(pixels).astype(np.float32)


def correct_rounded_stem(qdq_path: Path, float_path: Path, conv_input: str, fill: list[float]) -> bool:
    """Re-centre the int8 first conv on the mean pixel: rewrite its int32 bias in the QDQ model (in place).

    Grey levels are all positive (mean ~120), so the weights' rounding error dW times the input has a large mean
    part, dW * fill, that the normalised model never had (its input is centred on 0): measured, it doubled the int8
    stem's error on EfficientNet-Lite0. That part is a constant per output channel (the padded border is the fill
    too), so it goes into the bias exactly: b -= sum(dW * fill). `conv_input`: the pixel tensor the folded conv
    reads (weights may be renamed by later float rewrites). Returns whether that conv was found quantized."""
    q, f = onnx.load(str(qdq_path)), onnx.load(str(float_path), load_external_data=False)
    fconv = next((n for n in f.graph.node if n.op_type == "Conv" and n.input[0] == conv_input), None)
    w_float = _const(f, fconv.input[1]) if fconv is not None else None
    producer = {o: n for n in q.graph.node for o in n.output}

    def reads_pixels(n: onnx.NodeProto) -> bool:
        dq = producer.get(n.input[0])
        qn = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return qn is not None and qn.op_type == "QuantizeLinear" and qn.input[0] == conv_input

    conv = next((n for n in q.graph.node if n.op_type == "Conv" and len(n.input) > 2 and reads_pixels(n)), None)
    if conv is None or w_float is None or not fill:
        return False
    inits = {i.name: i for i in q.graph.initializer}
    wdq, bdq = producer.get(conv.input[1]), producer.get(conv.input[2])
    if wdq is None or bdq is None or wdq.op_type != "DequantizeLinear" or bdq.op_type != "DequantizeLinear" \
            or any(t not in inits for t in (*wdq.input[:2], *bdq.input[:2])):
        return False
    arr = {t: numpy_helper.to_array(inits[t]) for t in (*wdq.input, *bdq.input) if t in inits}
    wq, ws = arr[wdq.input[0]].astype(np.float64), arr[wdq.input[1]].astype(np.float64)
    wz = arr[wdq.input[2]].astype(np.float64) if len(wdq.input) > 2 and wdq.input[2] in arr else np.zeros_like(ws)
    shape = (-1, 1, 1, 1) if ws.ndim == 1 else ()
    w_deq = (wq - wz.reshape(shape)) * ws.reshape(shape)
    delta = ((w_deq - w_float) * np.asarray(fill, np.float64).reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
    bq, bs = arr[bdq.input[0]].astype(np.float64), arr[bdq.input[1]].astype(np.float64)
    new = np.clip(np.round(bq - delta / bs), -2**31, 2**31 - 1).astype(np.int32)
    inits[bdq.input[0]].CopyFrom(numpy_helper.from_array(new, bdq.input[0]))
    onnx.save_model(q, str(qdq_path), save_as_external_data=False)
    return True
