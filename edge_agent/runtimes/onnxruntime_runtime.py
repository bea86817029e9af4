"""ONNX Runtime backend: session options from the bundle and profile, providers with fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle import Manifest
from .base import ModelSession, Runtime, RuntimeInfo, RuntimeLoadError, to_integer

log = logging.getLogger(__name__)


def choose_providers(wanted: list[str], available: list[str]) -> list[str]:
    """The bundle's providers (best first) that this onnxruntime build has, CPU always last as the fallback.

    A Jetson bundle asks for TensorRT, CUDA, CPU: JetPack's onnxruntime-gpu has all three, the plain
    onnxruntime wheel only CPU."""
    usable = [p for p in wanted if p in available]
    skipped = [p for p in wanted if p not in available]
    if skipped:
        log.info("execution providers not available here, falling back: %s", ", ".join(skipped))
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    return usable


_ORT_ERRORS = tuple(e for e in (getattr(ort.capi.onnxruntime_pybind11_state, n, None) for n in
                                 ("Fail", "InvalidArgument", "RuntimeException", "NotImplemented", "EPFail"))
                    if isinstance(e, type))
_BAD_INPUT = tuple(e for e in (getattr(ort.capi.onnxruntime_pybind11_state, "InvalidArgument", None),)
                   if isinstance(e, type))
_QUIET = ort.RunOptions()
_QUIET.log_severity_level = 4  # a failing run is reported once, as our error line, not also as ORT's red log line


class OnnxRuntimeSession(ModelSession):
    def __init__(self, session: ort.InferenceSession, manifest: Manifest, info: RuntimeInfo) -> None:
        self._session = session
        self.manifest = manifest
        self.info = info
        self._output_names = [o.name for o in manifest.outputs]
        # integer inputs (uint8 pixels, int64 token ids): preprocessed images arrive as float32 grey levels
        self._integer = {t.name: np.dtype(t.dtype) for t in manifest.inputs if _integer_dtype(t.dtype)}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._integer:
            feeds = {k: to_integer(v, self._integer[k]) if k in self._integer else v for k, v in feeds.items()}
        try:
            return self._session.run(self._output_names, feeds, _QUIET)
        except _ORT_ERRORS as exc:  # one line and its code, not 1 (other error)
            line = f"the model failed on this input: {str(exc).strip().splitlines()[0]}"
            if isinstance(exc, _BAD_INPUT):  # a token id beyond the vocabulary: the input's fault (3), not the runtime's
                from ..pipeline.inputs import InputError

                raise InputError(line) from exc
            raise RuntimeLoadError(line) from exc  # Fail, EPFail, NotImplemented: the runtime's (40)


def _integer_dtype(name: str) -> bool:
    try:
        return np.dtype(name).kind in "iu"
    except TypeError:
        return False


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def load(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        threads: int | None = None,
        providers: list[str] | None = None,
        exact_int8: bool = False,
    ) -> ModelSession:
        """exact_int8: basic graph optimizations only, so int8 QDQ runs as written (exact, as on a Pi) instead of
        in fused kernels that saturate on x86 without VNNI (edge_agent/runtimes/int8_host.py)."""
        wanted = list(providers or manifest.execution_providers or ["CPUExecutionProvider"])
        usable = choose_providers(wanted, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if exact_int8
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.log_severity_level = 3
        # Idle thread pools sleep instead of spinning: the agent waits between requests most of the time, and a
        # spinning pool kept part of a core busy while idle (docs/provisioning.md, scripts/bench_idle.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        model_path = Path(bundle_dir) / manifest.model_file
        try:
            session = ort.InferenceSession(str(model_path), sess_options=opts, providers=usable)
        except Exception as exc:  # ORT raises its own exception types; keep one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise RuntimeLoadError(f"ONNX Runtime could not load {manifest.model_file}: {first}") from exc
        ran = session.get_providers()[0]
        log.info("ONNX Runtime %s runs %s on %s", ort.__version__, manifest.model_file, ran)
        info = RuntimeInfo(
            runtime="onnxruntime",
            version=ort.__version__,
            provider=ran,
            threads=int(threads or 0),
            details={"requested_providers": wanted, "session_providers": session.get_providers()},
        )
        return OnnxRuntimeSession(session, manifest, info)
