"""TensorFlow importers: Keras (.keras, .h5) and SavedModel folders -> a float32 TFLite reference.

TensorFlow is imported only here (host side, `edgekit[tflite]`). The float32 .tflite written
to the work folder is the accuracy reference for every precision converted from this source.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ImportFailed
from .base import ImportedModel

log = logging.getLogger(__name__)


def import_tensorflow():
    """`tensorflow`, quiet, or ImportFailed naming the extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportFailed(f"TensorFlow sources need TensorFlow: pip install 'edgekit[tflite]' ({exc})") from exc
    return tf


def _tree_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and bytes, sorted)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_keras(path: Path):
    """A Keras model from .keras/.h5: Keras 3 first, tf_keras (Keras 2) for legacy files."""
    import_tensorflow()
    errors = []
    try:
        import keras

        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        errors.append(f"keras: {_short(exc)}")
    try:
        import tf_keras

        return tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        errors.append(f"tf_keras: {_short(exc)}")
    custom = any("deserializ" in e or "Unknown layer" in e for e in errors)
    hint = ("; a model with custom layers or functions loads only where their code is: export it where it trains "
            "with model.export('saved_model_dir') and convert that folder") if custom else ""
    raise ImportFailed(f"{path} is not a loadable Keras model ({'; '.join(errors)}){hint}")


def _short(exc: Exception, limit: int = 200) -> str:
    """An error's first line, cut: Keras puts the model's whole config (thousands of characters) in its message."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def tflite_converter(kind: str, source: Path):
    """A tf.lite.TFLiteConverter for a Keras file or a SavedModel folder."""
    tf = import_tensorflow()
    if kind == "savedmodel":
        try:
            return tf.lite.TFLiteConverter.from_saved_model(str(source))
        except Exception as exc:  # a damaged or tag-less folder was TensorFlow's own message with exit 1
            raise ImportFailed(f"{source} is not a loadable SavedModel: {_short(exc)}") from exc
    return tf.lite.TFLiteConverter.from_keras_model(load_keras(source))


def convert_tf(kind: str, source: Path, out: Path, precision: str = "fp32",
               representative: Callable[[], Iterable[list[Any]]] | None = None, io_dtype: str = "float32") -> Path:
    """Convert a TensorFlow source to a .tflite file at `out` with tf.lite.TFLiteConverter.

    precision: fp32 | fp16 (float16 weights) | int8-dynamic (int8 weights, float activations)
    | int8-static (full integer with `representative` data; I/O float32, int8 or uint8).
    """
    tf = import_tensorflow()
    conv = tflite_converter(kind, source)
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8-static":
        if representative is None:
            raise ImportFailed("full-integer int8 needs calibration data (--calibration)")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[io_dtype]
        conv.inference_input_type = io
        conv.inference_output_type = io
    from ..tflite.model_io import stdout_to_stderr

    try:
        with stdout_to_stderr():
            data = conv.convert()
    except Exception as exc:
        raise ImportFailed(f"tf.lite.TFLiteConverter failed on {source}: {str(exc).strip().splitlines()[0]}") from exc
    out.write_bytes(data)
    return out


def import_tensorflow_model(source: Path, kind: str, workdir: Path) -> ImportedModel:
    """Keras file or SavedModel folder -> ImportedModel with a float32 TFLite reference."""
    if not source.exists():
        raise ImportFailed(f"{source} does not exist")
    tf = import_tensorflow()
    log.info("converting %s (%s) to a float32 TFLite reference", source, kind)
    ref = convert_tf(kind, source, workdir / "float.tflite")
    return ImportedModel(onnx_path=None, source_format=kind, source_sha256=_tree_sha256(source), opset=0,
                         details={"tensorflow": tf.__version__}, tflite_path=ref, tf_source=source)
