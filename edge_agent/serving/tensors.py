"""Tensors as clients see them: the bundle's inputs in the SOURCE model's layout, KServe v2 datatypes,
the binary tensor data extension's byte layout, and the checks every request goes through.

Clients speak in the source model's layout (what `edge-agent run` takes as .npy), so the same client
code gets the same answer from an ONNX bundle and from a TFLite bundle that onnx2tf turned NHWC.
Integer-quantized inputs and outputs are float to clients: the runtime (de)quantizes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ..bundle import Manifest, TensorSpec
from ..pipeline.detection import FrameGeometry
from ..pipeline.inputs import short_input_name, tensor_to_feed
from .errors import BadRequest

# KServe v2 / Open Inference Protocol datatype <-> numpy dtype (BYTES handled apart).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


def datatype_of(dtype: np.dtype | str) -> str:
    """The KServe datatype name of a numpy dtype (BYTES for strings/objects)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    return _BY_DTYPE[dt]


def public_dtype(spec: TensorSpec) -> np.dtype:
    """The dtype clients send/receive: float32 for integer-quantized tensors, else the manifest's."""
    if spec.dtype in ("int8", "uint8"):  # quantized I/O: the runtime (de)quantizes with the manifest's parameters
        return np.dtype(np.float32)
    return np.dtype(spec.dtype)


def public_shape(spec: TensorSpec) -> list[int]:
    """Shape in the source model's layout; -1 for a dynamic axis (a named or non-positive dim)."""
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape]
    if spec.source_layout and spec.layout != spec.source_layout and len(dims) == 4:
        order = (0, 3, 1, 2) if spec.layout == "NHWC" else (0, 2, 3, 1)  # bundle layout -> source layout
        dims = [dims[i] for i in order]
    return dims


def batchable(manifest: Manifest) -> bool:
    """True when every input's first axis is dynamic: requests can then be stacked into one run."""
    return bool(manifest.inputs) and all(
        len(t.shape) > 0 and not (isinstance(t.shape[0], int) and t.shape[0] > 0) for t in manifest.inputs)


@dataclass(frozen=True)
class TensorMeta:
    """One tensor of the model's metadata, as both protocols report it."""

    name: str
    datatype: str
    shape: list[int]
    layout: str


def metadata(manifest: Manifest) -> tuple[list[TensorMeta], list[TensorMeta]]:
    """(inputs, outputs) as clients see them."""
    def meta(t: TensorSpec, is_input: bool) -> TensorMeta:
        shape = public_shape(t) if is_input else [d if isinstance(d, int) and d > 0 else -1 for d in t.shape]
        layout = (t.source_layout or t.layout) if is_input else t.layout
        return TensorMeta(t.name, datatype_of(public_dtype(t)), shape, layout)

    return [meta(t, True) for t in manifest.inputs], [meta(t, False) for t in manifest.outputs]


def to_feeds(arrays: dict[str, np.ndarray], manifest: Manifest) -> tuple[dict[str, np.ndarray], int]:
    """Client tensors (source layout) -> runtime feeds, and the batch size. BadRequest names what is wrong."""
    names = [t.name for t in manifest.inputs]
    if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}  # one input: accept any name (TF Serving's default)
    short = {short_input_name(n): n for n in names}  # Keras inputs by their own names: 'feat' for 'serving_default_feat:0'
    arrays = {k if k in names else short.get(k, k): v for k, v in arrays.items()}
    unknown = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if unknown or missing:
        raise BadRequest(f"model inputs are {names}; got {sorted(arrays)}")
    feeds, batch = {}, None
    for spec in manifest.inputs:
        array = arrays[spec.name]
        if array.dtype.kind in ("O", "S", "U"):
            raise BadRequest(f"input '{spec.name}' takes numbers, got strings (send an image to the image routes)")
        want = public_shape(spec)
        got = list(array.shape)
        if len(got) == len(want) - 1:
            got = [1, *got]
        if len(got) != len(want) or any(w > 0 and g != w for g, w in zip(got, want)):
            raise BadRequest(f"input '{spec.name}' has shape {list(array.shape)}; the model expects {want}")
        try:
            feed = tensor_to_feed(array.astype(public_dtype(spec), copy=False), spec)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"input '{spec.name}': {exc}") from None
        if batch is not None and feed.shape[0] != batch:
            raise BadRequest(f"inputs disagree on the batch size ({batch} vs {feed.shape[0]})")
        feeds[spec.name], batch = feed, feed.shape[0]
    return feeds, int(batch or 1)


def input_geometry(manifest: Manifest) -> FrameGeometry:
    """Client tensors have no frame behind them: boxes stay in the model input's pixels."""
    spec = manifest.inputs[0]
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    hw = (dims[2], dims[3]) if len(dims) == 4 and spec.layout == "NCHW" else \
        (dims[1], dims[2]) if len(dims) == 4 else (1, 1)
    return FrameGeometry.identity(hw)


@dataclass(frozen=True)
class TensorInput:
    """A request's client tensors (source layout) as a pipeline.observe.LiveInput: another model's feeds
    are made from them as the active model's were; row 0 only (a shadow run compares one row per request)."""

    arrays: dict[str, np.ndarray]

    def prepare(self, manifest: Manifest) -> tuple[dict[str, np.ndarray], FrameGeometry]:
        feeds, _ = to_feeds(self.arrays, manifest)
        return {k: v[:1] for k, v in feeds.items()}, input_geometry(manifest)


def from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    """A tensor from the binary tensor data extension (row-major, little-endian; BYTES length-prefixed)."""
    count = element_count(shape)
    if datatype == "BYTES":
        items, pos, buf = [], 0, bytes(raw)
        while pos < len(buf):
            if pos + 4 > len(buf):
                raise BadRequest("BYTES tensor: truncated length prefix")
            (n,) = struct.unpack_from("<I", buf, pos)
            items.append(buf[pos + 4: pos + 4 + n])
            pos += 4 + n
            if len(items) > count:  # stop at once: the rest of a huge body is not parsed for nothing
                raise BadRequest(f"BYTES tensor holds more than {count} elements; shape {shape} needs {count}")
        if len(items) != count or pos != len(buf):
            raise BadRequest(f"BYTES tensor holds {len(items)} elements; shape {shape} needs {count}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"unknown datatype {datatype!r}; known: BYTES, {', '.join(DATATYPES)}")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"binary tensor has {len(raw)} bytes; {datatype}{shape} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def to_bytes(array: np.ndarray) -> bytes:
    """A tensor in the binary tensor data extension's layout."""
    if array.dtype.kind in ("O", "S", "U"):
        parts = []
        for item in array.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def element_count(shape: list[int]) -> int:
    """How many elements a shape holds, in Python ints: numpy's int64 product wraps around for huge dims, so a
    shape of [2**62, 4] 'needed' 0 values and the reshape failed with a 500."""
    return math.prod(shape)


def from_json_data(data: object, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from a KServe JSON `data` field (flat or nested, row-major)."""
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).reshape(-1)
        if not all(isinstance(x, str) for x in flat):  # JSON BYTES are strings; bytes(10**15) was a MemoryError
            raise BadRequest(f"input '{name}': BYTES data must be strings")
        array = np.array([x.encode() for x in flat], dtype=object)
    else:
        dtype = DATATYPES.get(datatype)
        if dtype is None:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
        try:
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: 300 for UINT8
            raise BadRequest(f"input '{name}': data is not {datatype}: {exc}") from None
    count = element_count(shape)
    if array.size != count:
        raise BadRequest(f"input '{name}' has {array.size} values; shape {shape} needs {count}")
    return array.reshape(shape)
