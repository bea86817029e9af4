"""ONNX -> TFLite through onnx2tf, run fully offline in a private working folder.

onnx2tf (1.28.8) has three habits this module contains:
- it rewrites its input .onnx in place (sng4onnx), so it always converts a copy;
- it reads and writes relative to the current directory, so it runs in a private temp folder;
- whenever every input is 4-D with 3 channels last, it downloads sample images from GitHub for an
  internal sanity inference, even when calibration data is given. We pre-place that file in the
  working folder, built from the user's own calibration data, and replace the download function
  for the duration of the call, so nothing is ever fetched. Int8 calibration uses only the
  user's data (custom_input_op_name_np_data_path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge_agent.bundle import TensorSpec

from ..data import Dataset
from ..errors import ConversionError
from .model_io import outputs_in_signature_order, stdout_to_stderr
from .pixel_grid import pixel_grid

log = logging.getLogger(__name__)

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
VARIANT_SUFFIX = {
    "fp32": "_float32.tflite",
    "fp16": "_float16.tflite",
    "int8-dynamic": "_dynamic_range_quant.tflite",
    "int8-static": "_integer_quant.tflite",  # int8 inside, float32 I/O
    "int8-static-intio": "_full_integer_quant.tflite",  # int8 inside, int8/uint8 I/O
}
_CWD_LOCK = threading.Lock()  # onnx2tf works in os.getcwd(): one conversion at a time per process


@dataclass
class Onnx2TfResult:
    model: Path  # the requested variant
    float32: Path  # always produced: size/latency reference
    seconds: float
    files: list[str]
    saved_model: Path | None = None  # onnx2tf's intermediate SavedModel (NHWC), kept for int8-static re-quantization
    pixel_grid: dict = field(default_factory=dict)  # what pixel_grid set at calibration (tensors, stem, shift)


def onnx2tf_version() -> str:
    from importlib.metadata import version

    return version("onnx2tf")


def _import_onnx2tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import onnx2tf
        import onnx2tf.onnx2tf as o2t_module
    except ImportError as exc:
        raise ConversionError(f"ONNX -> TFLite needs onnx2tf and TensorFlow: pip install 'edgekit[tflite]' ({exc})") from exc
    return onnx2tf, o2t_module


def nhwc(array: np.ndarray) -> np.ndarray:
    """NCHW batch -> NHWC (onnx2tf's input layout); other ranks unchanged."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def sample_images(calibration: Dataset | None, first: TensorSpec) -> np.ndarray:
    """A (20,128,128,3) float32 stand-in for onnx2tf's downloaded sample images, from the user's data.

    onnx2tf only uses it for its internal ONNX-vs-TF check; nearest-neighbour resized copies of
    the user's first calibration images keep it in the model's value range.
    """
    if calibration is not None:
        x = next(iter(calibration.inputs.values()))
        if x.ndim == 4:
            x = nhwc(x) if first.layout == "NCHW" else x
            if x.shape[-1] == 3:
                idx = np.arange(20) % len(x)
                rows = (np.arange(128) * x.shape[1]) // 128
                cols = (np.arange(128) * x.shape[2]) // 128
                return np.ascontiguousarray(x[idx][:, rows][:, :, cols].astype(np.float32))
    return np.full((20, 128, 128, 3), 0.5, dtype=np.float32)


@contextlib.contextmanager
def _private_cwd(parent: Path) -> Iterator[Path]:
    with _CWD_LOCK:
        work = Path(tempfile.mkdtemp(prefix="onnx2tf-", dir=parent))
        old = os.getcwd()
        os.chdir(work)
        try:
            yield work
        finally:
            os.chdir(old)


@contextlib.contextmanager
def _no_sample_download(module, array: np.ndarray) -> Iterator[None]:
    """Replace onnx2tf's sample-image download with our array for the duration of a call."""
    saved = getattr(module, "download_test_image_data", None)
    module.download_test_image_data = lambda: array
    try:
        yield
    finally:
        if saved is not None:
            module.download_test_image_data = saved


_TF_NAME = re.compile(r"[^A-Za-z0-9_.\\/>-]")  # characters TensorFlow refuses in scope names


def _copy_with_tf_names(src: Path, dst: Path) -> int:
    """Copy an ONNX model, renaming nodes and internal tensors TensorFlow cannot use as scope names.

    Paddle exports (PP-OCR cls) name nodes like `Conv@0`; onnx2tf turns node names into TF
    scopes and fails on '@'. Graph inputs and outputs keep their names (they are the data contract).
    Returns how many names were changed.
    """
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    taken = {n.name for n in g.node} | {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.initializer}
    mapping: dict[str, str] = {}

    def fix(name: str) -> str:
        if not name or name in keep or not _TF_NAME.search(name):
            return name
        if name not in mapping:
            new = _TF_NAME.sub("_", name)
            while new in taken:
                new += "_"
            taken.add(new)
            mapping[name] = new
        return mapping[name]

    if not any(_TF_NAME.search(x) for x in taken if x not in keep):
        shutil.copyfile(src, dst)
        return 0
    for node in g.node:  # (subgraphs of If/Loop are left as they are)
        node.name = fix(node.name)
        node.input[:] = [fix(x) for x in node.input]
        node.output[:] = [fix(x) for x in node.output]
    for init in g.initializer:
        init.name = fix(init.name)
    for vi in g.value_info:
        vi.name = fix(vi.name)
    onnx.save(model, str(dst))
    log.info("renamed %d ONNX names TensorFlow cannot use as scope names (e.g. '@')", len(mapping))
    return len(mapping)


def onnx_to_tflite(
    onnx_path: Path,
    workdir: Path,
    precision: str,
    inputs: Sequence[TensorSpec],
    calibration: Dataset | None = None,
    calibration_samples: int = 256,
    io_dtype: str = "float32",
    per_channel: bool = True,
    pixel_input: bool = False,
    stem_fill: list[float] | None = None,
    quantile: float | None = None,
    measured_ranges: bool = True,
) -> Onnx2TfResult:
    """Convert a float ONNX model to TFLite with onnx2tf; returns the variant for `precision`.

    precision: fp32 | fp16 | int8-dynamic | int8-static (full integer, calibrated on the user's
    data; io_dtype float32 keeps float I/O, int8/uint8 gives integer I/O). pixel_input: the model takes grey levels
    (fold-input): int8 quantizes them with scale 1 whatever the calibration data reach, and with `stem_fill` (the
    fold's mean pixel) the first conv's bias is re-centred for its weights' rounding (converter/tflite/pixel_grid.py).
    quantile: int8 calibration `linearquantile:quantile` (converter/tflite/linear_quantile.py) instead of minmax.
    measured_ranges: int8 ranges measured with every tensor kept (False: TensorFlow's own records, wrong after
    in-place kernels; only for comparing with TFLiteConverter's defaults).
    """
    import time

    if precision not in ("fp32", "fp16", "int8-dynamic", "int8-static"):
        raise ConversionError(f"TFLite precision {precision!r} is not supported (fp32, fp16, int8-dynamic, int8-static)")
    integer = precision == "int8-static"
    if integer and calibration is None:
        raise ConversionError("full-integer int8 TFLite needs calibration data: pass --calibration FILE.npz|IMAGE_FOLDER")
    whole = [t for t in inputs if t.dtype in ("uint8", "int8", "int16", "int32", "int64", "bool")]
    if integer and whole:  # onnx2tf feeds its int8 calibration as floats: 'Got FLOAT32 but expected UINT8', exit 1
        from ..errors import UsageError

        raise UsageError(f"TFLite int8-static through onnx2tf needs float inputs; {whole[0].name} is {whole[0].dtype}: "
                         "use --format onnx, or --precision int8-dynamic|fp16|fp32 for TFLite")
    _, module = _import_onnx2tf()
    t0 = time.perf_counter()
    out_dir = workdir / "tflite"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid: dict = {}
    with _private_cwd(workdir) as work:
        _copy_with_tf_names(onnx_path, work / "model.onnx")  # onnx2tf rewrites its input in place
        custom = _calibration_files(work, inputs, calibration, calibration_samples) if integer else None
        sample = sample_images(calibration, inputs[0])
        np.save(work / SAMPLE_FILE, sample)
        kwargs = dict(
            input_onnx_file_path=str(work / "model.onnx"),
            output_folder_path=str(work / "out"),
            output_dynamic_range_quantized_tflite=precision == "int8-dynamic",
            output_integer_quantized_tflite=integer,
            custom_input_op_name_np_data_path=custom,
            keep_nwc_or_nhwc_or_ndhwc_input_names=_nhwc_inputs(inputs),
            quant_type="per-channel" if per_channel else "per-tensor",
            input_quant_dtype=io_dtype if io_dtype in ("int8", "uint8") else "int8",
            output_quant_dtype=io_dtype if io_dtype in ("int8", "uint8") else "int8",
            not_use_onnxsim=True,
            copy_onnx_input_output_names_to_tflite=True,
            non_verbose=True,
        )
        try:
            # onnx2tf names its layers from tf_keras' per-process counters ("model_58/tf.nn.relu_20"): reset them
            # so a conversion gives the same tensor names (and bytes) whatever ran before it in this process.
            module.tf_keras.backend.clear_session()
            with _no_sample_download(module, sample), stdout_to_stderr(), \
                    pixel_grid(integer and pixel_input, stem_fill, grid, quantile if integer else None,
                               measured_ranges):
                module.convert(**kwargs)
        except SystemExit as exc:  # onnx2tf calls sys.exit(1) on unsupported graphs
            raise ConversionError(f"onnx2tf could not convert {onnx_path.name} (exit {exc.code}); run with -vv for its log") from exc
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ConversionError(f"onnx2tf could not convert {onnx_path.name}: {first}") from exc
        key = "int8-static-intio" if integer and io_dtype in ("int8", "uint8") else precision
        result = _keep_outputs(work / "out", out_dir, key, keep_saved_model=integer)
    shutil.rmtree(work, ignore_errors=True)
    result.seconds = round(time.perf_counter() - t0, 3)
    result.pixel_grid = {k: v for k, v in grid.items() if k != "unshifted"}
    return result


def _nhwc_inputs(inputs: Sequence[TensorSpec]) -> list[str] | None:
    """Graph inputs already NHWC (tf2onnx's exports of TFLite/Keras models): onnx2tf took every 4-D input for NCHW
    and made [1, 224, 224, 3] a [1, 224, 3, 224] input no image fitted."""
    return [t.name for t in inputs if t.layout == "NHWC"] or None


def _calibration_files(work: Path, inputs: Sequence[TensorSpec], calibration: Dataset, samples: int) -> list[list]:
    """onnx2tf's custom_input_op_name_np_data_path: the user's calibration data as .npy files in its layout."""
    custom: list[list] = []
    n = min(len(calibration), samples)
    for spec, (name, array) in zip(inputs, calibration.inputs.items()):
        path = work / f"calib_{len(custom)}.npy"
        np.save(path, nhwc(array[:n].astype(np.float32)) if spec.layout == "NCHW" else array[:n].astype(np.float32))
        custom.append([name, str(path), 0.0, 1.0])  # onnx2tf feeds (x - mean) / std
    return custom


def _keep_outputs(produced_dir: Path, out_dir: Path, key: str, keep_saved_model: bool) -> Onnx2TfResult:
    """Copy the wanted variant and the float32 reference (and for int8 the SavedModel) out of onnx2tf's folder."""
    produced = sorted(p.name for p in produced_dir.glob("*.tflite"))
    wanted = produced_dir / f"model{VARIANT_SUFFIX[key]}"
    if not wanted.is_file():
        raise ConversionError(f"onnx2tf did not write {wanted.name} (wrote {', '.join(produced) or 'nothing'})")
    model = out_dir / f"model.{key}.tflite"
    float32 = out_dir / "model.fp32.tflite"
    shutil.copyfile(wanted, model)
    outputs_in_signature_order(model)
    shutil.copyfile(produced_dir / f"model{VARIANT_SUFFIX['fp32']}", float32)
    saved_model = None
    if keep_saved_model and (produced_dir / "saved_model.pb").is_file():
        # onnx2tf writes the SavedModel it quantized from next to the .tflite files: the
        # mixed-precision fallback re-quantizes it with a deny-list (converter.tflite.denylist_quantizer).
        saved_model = out_dir / "saved_model"
        shutil.copytree(produced_dir, saved_model, ignore=shutil.ignore_patterns("*.tflite"), dirs_exist_ok=True)
    return Onnx2TfResult(model=model, float32=float32, seconds=0.0, files=produced, saved_model=saved_model)
