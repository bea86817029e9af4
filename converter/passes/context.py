"""The context a conversion carries from pass to pass, and the typed hand-over between passes.

Everything a pass leaves for a later one is a typed field here (never a hidden dict key), so a reader
sees who produces what: `measurements` holds only what goes into the report and the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from device_profiles import Profile
from edge_agent.bundle import Postprocess, Preprocess, SelfTest, TensorSpec

from ..accuracy.budget import DEFAULT_MAX_MAP_DROP, Budget
from ..accuracy.detection import DEFAULT_MIN_MATCH, DetectionScorer
from ..accuracy.ground_truth import ground_truth_for
from ..accuracy.evaluator import Evaluator
from ..accuracy.metrics import detect_task
from ..accuracy.mixed_precision import MixedPrecisionOutcome
from ..data import Dataset
from ..importers import ImportedModel
from ..options import ConvertOptions
from ..onnx.int8_arithmetic import exact_int8_for
from ..runners import median_latency_ms, run_model

if TYPE_CHECKING:
    from ..onnx.fold_input import InputFold
    from ..onnx.qdq_quantizer import OrtStaticQuantizer

GATE_CALIBRATION_SAMPLES = 256  # without eval data, the gate compares outputs on this many calibration samples


@dataclass
class OrtInt8Hand:
    """quantize -> mixed-precision (ONNX): the quantizer with its cached calibration, and the method chosen."""

    quantizer: OrtStaticQuantizer
    method: str


@dataclass
class TFSource:
    """tflite-convert -> tflite-mixed-precision: the TensorFlow source the int8 model was quantized from."""

    kind: str  # keras | savedmodel
    path: Path
    io_dtype: str = "float32"  # the int8 model's input/output type (--io-dtype)
    quantile: float | None = None  # the calibration chosen: P of linearquantile:P, None for TensorFlow's minmax


@dataclass
class ConversionContext:
    """Everything the passes share. Each pass reads what earlier passes left and adds its part."""

    options: ConvertOptions
    profile: Profile
    workdir: Path
    imported: ImportedModel | None = None
    float_model: Path | None = None  # cleaned float ONNX: the accuracy reference
    model: Path | None = None  # the candidate that will be packaged
    reference_model: Path | None = None  # float model in the bundle's format (size/latency reference); default float_model
    format: str = "onnx"
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    preprocess: Preprocess | None = None
    postprocess: Postprocess | None = None
    calibration: Dataset | None = None
    evaluation: Dataset | None = None
    measurements: dict[str, Any] = field(default_factory=dict)  # report + manifest: public figures only
    extra_files: dict[str, Path] = field(default_factory=dict)  # archive path -> local file
    report: list[dict[str, Any]] = field(default_factory=list)
    bundle_path: Path | None = None
    # hand-over between passes (not serialised)
    pixel_input: InputFold | None = None  # set by fold-input when the model takes grey levels, read by quantize
    ort_int8: OrtInt8Hand | None = None  # set by quantize (int8-static), read by mixed-precision
    tf_source: TFSource | None = None  # set by tflite-convert (int8-static), read by tflite-mixed-precision
    selftest: SelfTest | None = None  # set by selftest, read by package
    _evaluator: Evaluator | None = field(default=None, repr=False)  # cache of evaluator()
    on_step: Callable[[str], None] | None = field(default=None, repr=False)  # set per pass by run_passes

    def step(self, text: str) -> None:
        """A long step inside a pass says it is starting (a CI log gets a line; minutes of silence looked hung)."""
        if self.on_step is not None:
            self.on_step(text)

    def gate_data(self) -> tuple[Dataset | None, str]:
        """The data accuracy is measured on, and where it comes from: eval data, else calibration data."""
        if self.evaluation is not None:
            return self.evaluation, "eval"
        if self.calibration is not None:
            return self.calibration.head(GATE_CALIBRATION_SAMPLES), "calibration"
        return None, "none"

    def task(self) -> str:
        """What the model does for the gate (detection, classification, map, sequence, generic)."""
        if self.postprocess is not None and self.postprocess.kind == "detection":
            return "detection"
        return detect_task(self.outputs[self.served_output()].shape,
                           bool(self.postprocess and self.postprocess.kind == "classification"))

    def served_output(self) -> int:
        """Index of the output the bundle serves (the manifest's postprocess option `output`, else 0): the
        gate scores that one, as the agent reads it (issue 14: a box regressor was scored as the classifier)."""
        which = (self.postprocess.options or {}).get("output") if self.postprocess is not None else None
        names = [t.name for t in self.outputs]
        return names.index(which) if isinstance(which, str) and which in names else 0

    def budget(self) -> Budget:
        """The accuracy budget: the user's options where given, else the profile's.

        The profile states it in the metric users know: with labelled eval data, the top-1 drop in points
        (agreement with float is then not required: a flip between two wrong answers costs nothing); without
        labels, agreement with float."""
        o, acc = self.options, self.profile.accuracy
        labelled = self.evaluation is not None and self.evaluation.labels is not None
        if self.task() == "detection":
            default_agreement = DEFAULT_MIN_MATCH
        else:
            default_agreement = 0.0 if labelled else acc.min_agreement
        return Budget(min_agreement=o.min_agreement if o.min_agreement is not None else default_agreement,
                      max_top1_drop=o.max_accuracy_drop if o.max_accuracy_drop is not None else acc.max_top1_drop,
                      min_cosine=o.min_cosine,
                      max_map_drop=o.max_map_drop if o.max_map_drop is not None else DEFAULT_MAX_MAP_DROP)

    def run_first_output(self, model: Path, data: Dataset) -> np.ndarray:
        """The served output of `model` (ONNX or TFLite) over `data`, in the source model's layout (the first
        one unless the manifest names another)."""
        return run_model(model, data, self.inputs, self.outputs, exact_int8=self.exact_int8())[self.served_output()]

    def evaluator(self) -> Evaluator | None:
        """Scores models against the float model on the gate data; the float outputs are computed once."""
        data, _ = self.gate_data()
        if data is None:
            return None
        ev = self._evaluator
        if ev is None or ev.float_model != self.float_model or ev.specs != (self.inputs, self.outputs):
            specs = (list(self.inputs), list(self.outputs))
            if self.task() == "detection":
                ev = Evaluator(self.run_all_outputs, self.float_model, data, "detection", specs, self.detection_scorer)
            else:
                ev = Evaluator(self.run_first_output, self.float_model, data, self.task(), specs=specs)
            self._evaluator = ev
        return ev

    def run_all_outputs(self, model: Path, data: Dataset) -> list[np.ndarray]:
        """Every output of `model` (ONNX or TFLite) over `data`, in the source model's layout and order."""
        return run_model(model, data, self.inputs, self.outputs, exact_int8=self.exact_int8())

    def exact_int8(self) -> bool:
        """Score int8 with the target's exact arithmetic when this host's int8 kernels saturate and its do not."""
        return exact_int8_for(self.profile.hardware.arch)

    def detection_scorer(self, data: Dataset) -> DetectionScorer:
        """The detection gate for these samples (with their ground-truth boxes when --eval-labels gave them)."""
        pre = self.preprocess
        hw = (pre.size[0], pre.size[1]) if pre is not None and pre.kind == "image" else (1, 1)
        truth = None
        if self.options.eval_labels is not None:
            truth = ground_truth_for(Path(self.options.eval_labels), data, hw, pre.resize, self.options.labels)
        return DetectionScorer(dict(self.postprocess.options), [t.name for t in self.outputs],
                               len(self.options.labels) if self.options.labels else None, hw, truth)

    def take_mixed_precision(self, out: MixedPrecisionOutcome, **sensitivity_extra: Any) -> None:
        """Record a mixed-precision search in the measurements; adopt its model when it kept layers in float."""
        if out.sensitivity is not None:
            self.measurements["sensitivity"] = {**out.sensitivity, **sensitivity_extra}
        if out.model is not None:
            self.model, self.precision = out.model, "int8-mixed"
        if out.mixed is not None:
            self.measurements["mixed_precision"] = out.mixed

    def host_threads(self) -> int:
        """Threads for timing on this host: the profile's, at most the cores there are."""
        return max(1, min(self.profile.runtime.threads, os.cpu_count() or 1))

    def latency_probe(self, runs: int) -> Callable[[Path], float]:
        """`probe(model) -> median ms` over `runs` timed runs on this host (ONNX and TFLite files alike)."""
        feeds, threads = self.timing_feeds(), self.host_threads()
        return lambda model: median_latency_ms(model, feeds, threads, self.inputs, self.outputs, runs)

    def search_latency_probe(self, runs: int | None = None) -> Callable[[Path], float] | None:
        """Latency of each mixed-precision step (half the benchmark runs, at least 5; `runs` for the speed floor's
        fp32/int8 timings, which may refuse a conversion: the full --bench-runs); None with --bench-runs 0."""
        if self.options.bench_runs <= 0:
            return None
        return self.latency_probe(runs or max(5, self.options.bench_runs // 2))

    def timing_feeds(self) -> dict[str, np.ndarray]:
        """One input sample for timing: the first eval (else calibration) sample, else seeded noise."""
        data = self.evaluation or self.calibration
        if data is not None:
            return data.sample(0)
        rng = np.random.default_rng(0)
        return {t.name: _noise(rng, t.dtype, [d if isinstance(d, int) and d > 0 else 1 for d in t.shape])
                for t in self.inputs}


def _noise(rng: np.random.Generator, dtype: str, shape: list[int]) -> np.ndarray:
    """Seeded input noise in the input's type: pixels for uint8, zeros for other integers (token ids: 0 is in every
    vocabulary), normal floats otherwise (a float32 feed for a uint8 input was ORT's 'Unexpected input data type')."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        kind = np.dtype(np.float32)
    if kind == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind.kind in "iub":
        return np.zeros(shape, kind)
    return rng.standard_normal(shape).astype(np.float32)
