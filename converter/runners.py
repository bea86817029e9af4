"""Run any converted model file (ONNX or TFLite) over a dataset, or time it, by its suffix.

The passes call these instead of a runtime directly, so the gate, the host benchmark and the
self-test work the same on ONNX and TFLite candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_agent.bench import time_runs
from edge_agent.bundle import TensorSpec

from .data import Dataset


def is_tflite(path: Path) -> bool:
    return Path(path).suffix.lower() == ".tflite"


def run_model(path: Path, data: Dataset, inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = (),
              progress=None, exact_int8: bool = False) -> list[np.ndarray]:
    """Outputs of `path` on every sample, stacked, in the source model's layout.

    `inputs`/`outputs` are the TFLite model's manifest specs (layouts, quantization); unused for ONNX.
    exact_int8 (ONNX): int8 arithmetic as the target computes it, not the host's saturating kernels
    (converter.onnx.int8_arithmetic; XNNPACK's TFLite kernels widen before they add, nothing to do there).
    """
    if is_tflite(path):
        from .tflite.model_io import run_tflite_dataset

        return run_tflite_dataset(path, data, inputs, outputs, progress=progress)
    from .onnx.model_io import run_dataset

    return run_dataset(path, data, progress, exact_int8)


def runner(path: Path, feeds: dict[str, np.ndarray], threads: int, inputs: Sequence[TensorSpec] = (),
           outputs: Sequence[TensorSpec] = ()) -> tuple[Callable[[], Any], dict[str, Any]]:
    """A zero-argument call that runs `path` once on `feeds` (source layout), and what runs it."""
    if is_tflite(path):
        from edge_agent.runtimes.litert_runtime import TFLiteModel

        from .tflite.model_io import feeds_in_layout

        model = TFLiteModel(path, threads, inputs, outputs)
        arrays = feeds_in_layout(feeds, inputs)
        return (lambda: model.run_list(arrays)), {"runtime": "litert", "interpreter": model.backend.name,
                                                   "delegate": model.delegate}
    from .onnx.model_io import ort_session

    sess = ort_session(path, threads)
    names = [x.name for x in sess.get_outputs()]
    return (lambda: sess.run(names, feeds)), {"runtime": "onnxruntime", "provider": "CPUExecutionProvider"}


def median_latency_ms(path: Path, feeds: dict[str, np.ndarray], threads: int, inputs: Sequence[TensorSpec] = (),
                      outputs: Sequence[TensorSpec] = (), runs: int = 10, warmup: int = 3) -> float:
    """Median latency (ms) of `path` on `feeds` over `runs` timed runs after `warmup` untimed ones."""
    call, _ = runner(path, feeds, threads, inputs, outputs)
    _, samples = time_runs(call, runs, warmup)
    return round(float(np.median(samples)), 4)
