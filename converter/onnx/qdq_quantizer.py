"""ONNX Runtime static int8 (QDQ) with calibration computed once per method and cached, so the
calibration search, the sensitivity analysis and the mixed-precision fallback re-quantize with
different nodes_to_exclude in well under a second each instead of re-calibrating."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import onnx

from ..accuracy.calibration_choice import parse_method
from ..data import Dataset

log = logging.getLogger(__name__)
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# `--quantize-ops weighted`: only weight-carrying ops get QDQ; Add/Mul/Resize/activations stay float between them.
OP_SETS: dict[str, tuple[str, ...] | None] = {"all": None, "weighted": QUANTIZABLE_OPS}
MIN_QDQ_OPSET = 13  # per-channel DequantizeLinear needs the `axis` attribute (opset 13)


class DatasetReader:
    """ONNX Runtime CalibrationDataReader over a Dataset, one sample per batch (also iterable)."""

    def __init__(self, data: Dataset, limit: int) -> None:
        self._data = data
        self._n = min(len(data), limit)
        self._it: Iterator[int] = iter(range(self._n))

    def get_next(self):
        i = next(self._it, None)
        return None if i is None else self._data.sample(i)

    def rewind(self) -> None:
        self._it = iter(range(self._n))

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)


def quant_type(name: str):
    """ONNX Runtime's QuantType for "int8" / "uint8"."""
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def prepare_for_qdq(model_path: Path, out: Path) -> tuple[Path, list[str]]:
    """Upgrade opset < 13 and name unnamed nodes (nodes_to_exclude needs names). Returns path, notes."""
    model = onnx.load(str(model_path))
    notes = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, MIN_QDQ_OPSET)
        notes.append(f"opset {opset} -> {MIN_QDQ_OPSET} (per-channel QDQ needs it)")
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
            renamed += 1
        seen.add(node.name)
    if renamed:
        notes.append(f"named {renamed} unnamed nodes")
    if not notes:
        return model_path, notes
    onnx.save_model(model, str(out), save_as_external_data=False)
    return out, notes


def quantizable_nodes(model_path: Path, op_types: tuple[str, ...] = QUANTIZABLE_OPS) -> list[str]:
    """Names of the weight-carrying nodes the sensitivity analysis and fallback work on, in graph order."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in op_types]


@dataclass
class OrtStaticQuantizer:
    """Static QDQ quantization of one float model with per-method cached calibration ranges."""

    src: Path
    workdir: Path
    calibration: Dataset
    samples: int
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    op_set: str = "all"  # key of OP_SETS; calibration always covers all ops so every set reuses the cache
    keep_float: list[str] = field(default_factory=list)  # nodes never quantized (a detector's decode head)
    exact_grid: list[str] = field(default_factory=list)  # tensors of whole grey levels: scale 1, zero point 0, not calibrated
    stem: tuple[str, list[float]] | None = None  # folded first conv (its pixel input, fill pixel): bias re-centred after rounding
    _caches: dict[str, Path] = field(default_factory=dict)
    _count: int = 0

    def on_source(self, src: Path, workdir: Path | None = None) -> "OrtStaticQuantizer":
        """The same quantizer (float head, grey-level inputs, stem, op set) on a rewritten float model (equalized,
        compensated). A detector's head must stay float in every later build, e.g. the mixed-precision search's.
        The same workdir reuses the calibration ranges on disk; a new one calibrates again."""
        import dataclasses

        same = workdir is None or workdir == self.workdir
        return dataclasses.replace(self, src=src, workdir=self.workdir if same else workdir,
                                   keep_float=list(self.keep_float), exact_grid=list(self.exact_grid), _caches={},
                                   _count=self._count if same else 0)  # same folder: never overwrite q1.onnx...

    def _common(self, method: str) -> dict[str, Any]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat

        name, pct = parse_method(method)
        extra: dict[str, Any] = {"CalibPercentile": pct} if pct is not None else {}
        if self.exact_grid:  # converter/onnx/fold_input.py: pixels 0..255 on the uint8 grid itself, nothing rounded
            import numpy as np

            zero = np.array(0 if self.activation_type == "uint8" else -128, np.uint8 if self.activation_type == "uint8" else np.int8)
            extra["TensorQuantOverrides"] = {t: [{"scale": np.array(1.0, np.float32), "zero_point": zero}] for t in self.exact_grid}
        return dict(quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                    activation_type=quant_type(self.activation_type), weight_type=quant_type(self.weight_type),
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile,
                                      "distribution": CalibrationMethod.Distribution,
                                      "meanquantile": CalibrationMethod.MinMax,  # ranges: our cache
                                      "linearquantile": CalibrationMethod.MinMax}[name],
                    extra_options=extra)

    def quantize(self, method: str, exclude: list[str] | None = None, dst: Path | None = None,
                 op_set: str | None = None) -> Path:
        """Quantize with `method`, leaving `exclude` nodes in float; calibrates on first use of a method."""
        from onnxruntime.quantization import quantize_static

        self._count += 1
        dst = dst or self.workdir / f"q{self._count}.onnx"
        cache = self.workdir / f"calib.{method.replace(':', '_')}.json"
        ops = OP_SETS[op_set or self.op_set]
        if not cache.is_file() and parse_method(method)[0] == "meanquantile":
            self._mean_quantile_cache(method, cache)
        if not cache.is_file() and parse_method(method)[0] == "linearquantile":
            self._linear_quantile_cache(method, cache)
        if not cache.is_file() and ops is not None:  # calibrate every tensor once, so all op sets share the cache
            self.quantize(method, dst=self.workdir / "calibrate.onnx", op_set="all")
        reader = None if cache.is_file() else DatasetReader(self.calibration, self.samples)
        extra = {"op_types_to_quantize": list(ops)} if ops is not None else {}
        # ORT's histogram calibrators print progress to stdout and warn about pre-processing: keep --json clean.
        with contextlib.redirect_stdout(io.StringIO()), _quiet("root"):
            quantize_static(str(self.src), str(dst), reader, nodes_to_exclude=[*self.keep_float, *(exclude or [])],
                            calibration_cache_path=str(cache), **self._common(method), **extra)
        self._caches[method] = cache
        if self.stem is not None:
            from .fold_input import correct_rounded_stem

            correct_rounded_stem(dst, self.src, *self.stem)
        return dst


    def _linear_quantile_cache(self, method: str, cache: Path) -> None:
        """MinMax ranges, except on the tensors no ReLU/Clip bounds (linear bottleneck convs, residual Adds): there
        the mean per-input quantiles. Their rare outliers stretch one scale for every input; a ReLU6 output's
        range is its own bound and clipping it cost agreement (MobileNetV2, held-out photos, plain int8: minmax
        0.757, these quantiles at 99.9 % 0.830, quantiles on every tensor 0.587)."""
        import json

        pct = parse_method(method)[1]
        self.quantize("minmax", dst=self.workdir / "calibrate.onnx", op_set="all")
        self.quantize(f"meanquantile:{pct}", dst=self.workdir / "calibrate.onnx", op_set="all")
        ranges = json.loads((self.workdir / "calib.minmax.json").read_text())
        quantiles = json.loads((self.workdir / f"calib.meanquantile_{pct}.json").read_text())["data"]
        for name in unbounded_tensors(self.src):
            if name in quantiles and name in ranges["data"] and name not in self.exact_grid:
                ranges["data"][name] = quantiles[name]
        cache.write_text(json.dumps(ranges))

    def _mean_quantile_cache(self, method: str, cache: Path) -> None:
        """ORT's calibration cache, with each tensor's range = the mean over inputs of that input's
        (100 - q) / q percentiles. The tensors are the ones ORT's own MinMax calibration records."""
        import json

        import numpy as np

        from .activation_error import _expose
        from .model_io import ort_session

        self.quantize("minmax", dst=self.workdir / "calibrate.onnx", op_set="all")
        ranges = json.loads((self.workdir / "calib.minmax.json").read_text())
        graph_inputs = {i.name for i in onnx.load(str(self.src), load_external_data=False).graph.input}
        names = [n for n in ranges["data"] if n not in graph_inputs]
        sess = ort_session(_expose(self.src, names, self.workdir / "calibrate.exposed.onnx"))
        q = (parse_method(method)[1] or 99.99) / 100.0
        lo: dict[str, list[float]] = {n: [] for n in ranges["data"]}
        hi: dict[str, list[float]] = {n: [] for n in ranges["data"]}
        for feed in DatasetReader(self.calibration, self.samples):
            values = dict(zip(names, sess.run(names, feed)))
            values.update({k: v for k, v in feed.items() if k in lo})
            for n, v in values.items():
                v = np.asarray(v, dtype=np.float32).ravel()
                lo[n].append(float(np.quantile(v, 1.0 - q)))
                hi[n].append(float(np.quantile(v, q)))
        for n, entry in ranges["data"].items():
            if lo[n]:
                entry["lowest"]["data"] = [float(np.mean(lo[n]))]
                entry["highest"]["data"] = [float(np.mean(hi[n]))]
        cache.write_text(json.dumps(ranges))


def unbounded_tensors(model_path: Path) -> list[str]:
    """Outputs of Conv/Gemm/MatMul that no ReLU/Clip follows, and of Add (residual sums), except graph outputs: the
    activations whose range no activation function bounds."""
    model = onnx.load(str(model_path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, set()).add(n.op_type)
    outputs = {o.name for o in model.graph.output}
    linear = ("Conv", "ConvTranspose", "Gemm", "MatMul")
    return [n.output[0] for n in model.graph.node if n.output and n.output[0] not in outputs
            and (n.op_type == "Add" or n.op_type in linear and not consumers.get(n.output[0], set()) & {"Relu", "Clip"})]


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger() if name == "root" else logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
