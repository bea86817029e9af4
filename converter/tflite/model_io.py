"""Small TFLite helpers shared by the passes: tensor specs, running a model over a dataset.

Models run through the agent's own LiteRT code (edge_agent.runtimes.litert_runtime), so the
gate and the host benchmark measure exactly what the device will run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edge_agent.bundle import Quantization, TensorSpec
from edge_agent.pipeline.preprocess import to_layout
from edge_agent.runtimes.litert_runtime import TFLiteModel, open_interpreter

from ..data import Dataset

log = logging.getLogger(__name__)

_DTYPES = {"float32", "float16", "int8", "uint8", "int32", "int64", "bool"}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """TensorFlow/onnx2tf print to stdout ("Saved artifact at ...", endpoint listings): kept out of `--json` output
    and of the user's terminal. The debug log (-vv) has it; when the step fails it goes to stderr (it may say why)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    except BaseException:
        sys.stderr.write(printed.getvalue()[-8000:])
        raise
    finally:
        if printed.getvalue():
            log.debug("%s", printed.getvalue().rstrip())


def op_name(model, op) -> str:
    """The builtin name (CONV_2D, ADD...) of `op` in a flatbuffer object model (flatbuffer_utils)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


def outputs_in_signature_order(path: Path) -> bool:
    """Put a .tflite file's graph outputs in its serving signature's order (output_0, output_1, ...: the source
    model's order), rewriting the file; True when it changed. TFLiteConverter's int8 model from onnx2tf's SavedModel
    lists them otherwise (`PartitionedCall:1, :3, :0, :2` for a 4-output hand landmark model), and roles, names and
    the gate follow outputs by position: the gate compared a presence score with landmarks."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    signatures = model.signatureDefs or []
    if len(signatures) != 1:
        return False
    keyed = {tensor_name(t): t.tensorIndex for t in signatures[0].outputs}
    graph = model.subgraphs[signatures[0].subgraphIndex]
    order = [keyed.get(f"output_{i}") for i in range(len(keyed))]
    if None in order or sorted(order) != sorted(graph.outputs) or list(graph.outputs) == order:
        return False
    graph.outputs = order
    flatbuffer_utils.write_model(model, str(path))
    return True


def tensor_name(tensor) -> str:
    """A flatbuffer object model tensor's name as str (the object API keeps bytes)."""
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    return name if name in _DTYPES else "float32"


def _layouts(shape: list[int], source: TensorSpec | None) -> tuple[str, str | None]:
    """(layout, source_layout) of a TFLite tensor given the source model's tensor, if any."""
    if len(shape) == 4:
        if source is not None and source.layout == "NCHW":
            if list(source.shape[1:]) == list(shape[1:]):
                return "NCHW", None  # kept NCHW
            return "NHWC", "NCHW"  # onnx2tf transposed it
        return "NHWC", None
    if len(shape) == 2:
        return "NC", None
    return "ANY", None


def tflite_specs(model_path: Path, source_inputs: Sequence[TensorSpec] | None = None,
                 source_outputs: Sequence[TensorSpec] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a .tflite file as manifest TensorSpecs, in the interpreter's order.

    `source_*` are the source model's specs (same order): a 4-D tensor whose shape is the
    source's NCHW shape transposed is recorded as layout NHWC with source_layout NCHW.
    Integer tensors carry their quantization parameters.
    """
    interpreter, _ = open_interpreter(model_path, threads=1, use_xnnpack=False)

    def spec(detail, source: TensorSpec | None, is_input: bool) -> TensorSpec:
        shape = [int(d) for d in detail["shape"]]
        sig = detail.get("shape_signature")
        if sig is not None and len(sig) == len(shape) and int(sig[0]) == -1 and source is not None and isinstance(source.shape[0], str):
            shape[0] = source.shape[0]  # keep a symbolic batch the source declared
        layout, source_layout = _layouts(shape, source)
        dtype = _dtype_name(detail["dtype"])
        quant = None
        if dtype in ("int8", "uint8"):
            scale, zp = detail.get("quantization", (0.0, 0))
            if scale:
                quant = Quantization(scale=float(scale), zero_point=int(zp))
        return TensorSpec(name=detail["name"], dtype=dtype, shape=shape, layout=layout, source_layout=source_layout,
                          quantization=quant)

    src_in = list(source_inputs or [])
    src_out = list(source_outputs or [])
    ins = [spec(d, src_in[i] if i < len(src_in) else None, True) for i, d in enumerate(interpreter.get_input_details())]
    details = interpreter.get_output_details()
    order = source_order(details, src_out)
    outs = [spec(details[j], src_out[i] if i < len(src_out) else None, False) for i, j in enumerate(order)]
    return ins, outs


def source_order(details: Sequence[dict], source: Sequence[TensorSpec]) -> list[int]:
    """Indices into the interpreter's output `details`, one per source output in the source's order (then any
    outputs left over). TensorFlow's converter may list a SavedModel's outputs in another order than the ONNX model
    it came from (int8 BlazeFace: `PartitionedCall:1` (scores) before `PartitionedCall:0` (boxes)), so outputs pair
    by name, else by shape (in either 4-D layout), ties going to the lowest `:k` suffix, then the first listed."""
    def key(j: int) -> tuple[int, int]:
        suffix = str(details[j]["name"]).rpartition(":")[2]
        return (int(suffix) if suffix.isdigit() else len(details), j)

    def fits(j: int, spec: TensorSpec) -> bool:
        shape = [int(d) for d in details[j]["shape"]]
        want = [d if isinstance(d, int) else -1 for d in spec.shape]
        layouts = [want] + ([[want[0], want[2], want[3], want[1]]] if len(want) == 4 else [])
        return any(len(w) == len(shape) and all(a < 0 or a == b for a, b in zip(w[1:], shape[1:])) for w in layouts)

    free = list(range(len(details)))
    order: list[int] = []
    for spec in source[: len(details)]:
        named = [j for j in free if details[j]["name"] == spec.name]
        j = named[0] if named else min([j for j in free if fits(j, spec)] or free, key=key)
        order.append(j)
        free.remove(j)
    return order + free


def feeds_in_layout(sample: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """A dataset sample (source layout, dict in model order) -> arrays in the TFLite model's layout."""
    arrays = list(sample.values())
    return [to_layout(a, s.source_layout, s.layout) if s.source_layout and not _fits(a, s) else a
            for a, s in zip(arrays, specs)]


def _fits(array: np.ndarray, spec: TensorSpec) -> bool:
    """Already in the spec's shape (apart from the batch axis)?"""
    return array.ndim == len(spec.shape) and all(
        not isinstance(w, int) or w <= 0 or g == w for g, w in zip(array.shape[1:], spec.shape[1:]))


def outputs_in_source_layout(outputs: list[np.ndarray], specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    return [to_layout(o, s.layout, s.source_layout) if s.source_layout else o for o, s in zip(outputs, specs)]


def run_tflite_dataset(model_path: Path, data: Dataset, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                       threads: int | None = None, progress=None) -> list[np.ndarray]:
    """Run a .tflite model on every sample (batch 1); outputs in the source model's layout, float32."""
    model = TFLiteModel(model_path, threads, inputs, outputs)
    collected: list[list[np.ndarray]] = []
    for i in range(len(data)):
        outs = outputs_in_source_layout(model.run_list(feeds_in_layout(data.sample(i), inputs)), outputs)
        if not collected:
            collected = [[] for _ in outs]
        for j, out in enumerate(outs):
            collected[j].append(np.asarray(out, dtype=np.float32))
        if progress:
            progress(1)
    return [np.concatenate(c, axis=0) for c in collected]


def representative_dataset(data: Dataset, n: int, specs: Sequence[TensorSpec]) -> Callable[[], Iterator[list[np.ndarray]]]:
    """tf.lite's representative_dataset: the first n samples in the TFLite model's layout (onnx2tf: NHWC), float32
    (integer inputs, e.g. token ids, keep their type: TFLite refuses a float for them)."""

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(min(n, len(data))):
            yield [a if a.dtype.kind in "iub" else np.asarray(a, dtype=np.float32)
                   for a in map(np.asarray, feeds_in_layout(data.sample(i), specs))]

    return gen
