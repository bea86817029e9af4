"""LiteRT (TFLite) backend: ai-edge-litert, else tflite-runtime, else tensorflow.lite.

Inputs are matched to the model by position (TFLite tensor names change between converter
variants, so the manifest order is the contract). Integer-I/O models get float feeds quantized
and integer outputs dequantized with the manifest's `quantization` parameters (falling back to
the ones stored in the model file), so callers always pass and receive float32.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import Manifest, TensorSpec
from .base import ModelSession, Runtime, RuntimeInfo, RuntimeLoadError, to_integer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InterpreterBackend:
    """Which Python package provides the TFLite interpreter here."""

    name: str  # ai-edge-litert | tflite-runtime | tensorflow.lite
    version: str
    interpreter_cls: Any
    resolver_type: Any  # OpResolverType enum, or None when the package has none


def _try_litert() -> InterpreterBackend | None:
    try:
        from ai_edge_litert import interpreter as mod
    except ImportError:
        return None
    try:
        from importlib.metadata import version

        ver = version("ai-edge-litert")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        ver = "unknown"
    return InterpreterBackend("ai-edge-litert", ver, mod.Interpreter, getattr(mod, "OpResolverType", None))


def _try_tflite_runtime() -> InterpreterBackend | None:
    try:
        from tflite_runtime import interpreter as mod
    except ImportError:
        return None
    import tflite_runtime

    return InterpreterBackend("tflite-runtime", getattr(tflite_runtime, "__version__", "unknown"), mod.Interpreter,
                              getattr(mod, "OpResolverType", None))


def _try_tensorflow() -> InterpreterBackend | None:
    try:
        import tensorflow as tf
    except ImportError:
        return None
    resolver = getattr(tf.lite.experimental, "OpResolverType", None)
    return InterpreterBackend("tensorflow.lite", tf.__version__, tf.lite.Interpreter, resolver)


_BACKEND_ORDER = (_try_litert, _try_tflite_runtime, _try_tensorflow)


def find_backend() -> InterpreterBackend:
    """The first TFLite interpreter package that imports; RuntimeLoadError when none does."""
    for probe in _BACKEND_ORDER:
        backend = probe()
        if backend is not None:
            return backend
    raise RuntimeLoadError(
        "no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime, or tensorflow)"
    )


def open_interpreter(model_path: Path, threads: int | None = None, use_xnnpack: bool = True):
    """A TFLite interpreter with tensors allocated, and the backend that made it.

    use_xnnpack=False asks for the builtin kernels (the converter inspects and times models so); a model with a
    custom op only XNNPACK implements (MediaPipe's Convolution2DTransposeBias, MaxPoolingWithArgmax2D,
    MaxUnpooling2D: the selfie segmentation models) gets XNNPACK anyway, as the device runs it: it was refused
    as 'not a loadable TFLite model'."""
    backend = find_backend()
    kwargs: dict[str, Any] = {"model_path": str(model_path)}
    if threads:
        kwargs["num_threads"] = int(threads)
    resolvers = backend.resolver_type
    if resolvers is not None:
        kwargs["experimental_op_resolver_type"] = resolvers.AUTO if use_xnnpack else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        try:
            interpreter = backend.interpreter_cls(**kwargs)
            interpreter.allocate_tensors()
        except RuntimeError as exc:
            if use_xnnpack or resolvers is None or "custom op" not in str(exc):
                raise
            interpreter = backend.interpreter_cls(**{**kwargs, "experimental_op_resolver_type": resolvers.AUTO})
            interpreter.allocate_tensors()
    except Exception as exc:  # the interpreters raise ValueError/RuntimeError with long texts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise RuntimeLoadError(f"{backend.name} could not load {Path(model_path).name}: {first}") from exc
    return interpreter, backend


def delegated_nodes(interpreter) -> int:
    """How many DELEGATE nodes (XNNPACK partitions) the interpreter's graph has; -1 if unknown."""
    try:
        return sum(1 for op in interpreter._get_ops_details() if op.get("op_name") == "DELEGATE")
    except Exception:
        return -1


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float -> integer tensor: round(x / scale + zero_point), clipped to the dtype's range."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> float32: (q - zero_point) * scale."""
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def _params(spec: TensorSpec | None, detail: dict[str, Any]) -> tuple[float, int]:
    if spec is not None and spec.quantization is not None:
        return float(spec.quantization.scale), int(spec.quantization.zero_point)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def _bind_outputs(details: list[dict[str, Any]], specs: list[TensorSpec]) -> list[tuple[dict[str, Any], TensorSpec | None]]:
    """Each output detail with its manifest spec, in the manifest's order when it names every output (a TFLite file
    may list its outputs in another order than the source model the manifest follows), else in the file's order."""
    names = [d["name"] for d in details]
    if specs and len(specs) == len(names) == len(set(names)) and sorted(s.name for s in specs) == sorted(names):
        return [(details[names.index(s.name)], s) for s in specs]
    return [(d, specs[i] if i < len(specs) else None) for i, d in enumerate(details)]


class TFLiteModel:
    """A .tflite file ready to run with float feeds in model order (used by the agent and converter)."""

    def __init__(self, model_path: Path, threads: int | None = None,
                 inputs: Sequence[TensorSpec] | None = None, outputs: Sequence[TensorSpec] | None = None,
                 use_xnnpack: bool = True) -> None:
        self.path = Path(model_path)
        self.interpreter, self.backend = open_interpreter(self.path, threads, use_xnnpack)
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        specs_in = list(inputs or [])
        specs_out = list(outputs or [])
        if specs_in and len(specs_in) != len(self.input_details):
            raise RuntimeLoadError(f"{self.path.name} has {len(self.input_details)} inputs; the manifest lists {len(specs_in)}")
        self._in = [(d, specs_in[i] if specs_in else None) for i, d in enumerate(self.input_details)]
        self._out = _bind_outputs(self.output_details, specs_out)
        self.delegate_nodes = delegated_nodes(self.interpreter)
        self.threads = int(threads or 0)
        self._shapes = {int(d["index"]): tuple(int(n) for n in d["shape"]) for d in self.input_details}  # as allocated

    def _resize(self, detail: dict[str, Any], shape: tuple[int, ...]) -> None:
        """Resize an input (another batch size); a shape the model cannot take leaves the interpreter as it was."""
        index = int(detail["index"])
        try:
            self.interpreter.resize_tensor_input(index, list(shape))
            self.interpreter.allocate_tensors()
        except Exception as exc:
            self.interpreter.resize_tensor_input(index, list(self._shapes[index]))  # the next good input still runs
            self.interpreter.allocate_tensors()
            from ..pipeline.inputs import InputError

            raise InputError(f"input {detail['name']} expects shape {list(self._shapes[index])}, got {list(shape)}") from exc
        self._shapes[index] = shape
        self.input_details = self.interpreter.get_input_details()

    @property
    def delegate(self) -> str:
        return "XNNPACK" if self.delegate_nodes > 0 else "builtin kernels"

    def run_list(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once; `arrays` in model input order (float, or already the model's dtype)."""
        if len(arrays) != len(self._in):
            raise RuntimeLoadError(f"{self.path.name} takes {len(self._in)} inputs, got {len(arrays)}")
        for (detail, spec), x in zip(self._in, arrays):
            dtype = np.dtype(detail["dtype"])
            x = np.asarray(x)
            if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
                scale, zp = _params(spec, detail)
                if scale == 0:  # a plain integer input (uint8 pixels, token ids): the values themselves, rounded
                    x = to_integer(x, np.dtype(dtype))
                else:
                    x = quantize(x, scale, zp, dtype)
            elif x.dtype != dtype:
                x = x.astype(dtype)
            if tuple(x.shape) != self._shapes[detail["index"]]:
                self._resize(detail, tuple(x.shape))
            self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        results = []
        for detail, spec in self._out:
            y = self.interpreter.get_tensor(detail["index"])  # a copy already (tensor() would be the view)
            if np.issubdtype(y.dtype, np.integer):
                scale, zp = _params(spec, detail)
                if scale:
                    y = dequantize(y, scale, zp)
            results.append(y)
        return results


class LiteRTSession(ModelSession):
    """A LiteRT interpreter behind a lock: an interpreter is not thread-safe (set_tensor/invoke/get_tensor
    share its buffers, and a batch change resizes them), and the agent's inference loop, the camera
    pipeline and the local serving endpoint (edge_agent.serving) may all call `run` at once."""

    def __init__(self, model: TFLiteModel, manifest: Manifest, info: RuntimeInfo) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.manifest = manifest
        self.info = info

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = [t.name for t in self.manifest.inputs]
        if all(n in feeds for n in names):
            arrays = [feeds[n] for n in names]
        elif len(feeds) == len(names):
            arrays = list(feeds.values())  # positional: TFLite names are not a stable contract
        else:
            raise RuntimeLoadError(f"model takes inputs {names}, got {sorted(feeds)}")
        with self._lock:
            return self._model.run_list(arrays)

    def close(self) -> None:
        with self._lock:
            self._model = None  # type: ignore[assignment]


class LiteRTRuntime(Runtime):
    name = "litert"

    def load(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> ModelSession:
        model_path = Path(bundle_dir) / manifest.model_file
        use_xnnpack = not providers or any(p.upper() in ("XNNPACK", "CPU", "AUTO") for p in providers)
        model = TFLiteModel(model_path, threads, manifest.inputs, manifest.outputs, use_xnnpack=use_xnnpack)
        if model.backend.name == "tflite-runtime":
            log.warning("running on tflite-runtime (fallback): it needs numpy<2 and lacks newer kernels; "
                        "prefer `pip install ai-edge-litert`")
        info = RuntimeInfo(
            runtime="litert",
            version=model.backend.version,
            provider=model.delegate,
            threads=model.threads,
            details={
                "interpreter": model.backend.name,
                "delegate": model.delegate,
                "delegate_nodes": model.delegate_nodes,
                "input_dtypes": [str(np.dtype(d["dtype"])) for d in model.input_details],
                "output_dtypes": [str(np.dtype(d["dtype"])) for d in model.output_details],
            },
        )
        log.info("%s %s runs %s on %s, %s threads", model.backend.name, model.backend.version,
                 manifest.model_file, model.delegate, model.threads or "default")
        return LiteRTSession(model, manifest, info)
