"""Converter passes: each a small unit with a run() that updates the context and a report entry."""

from .onnx_mixed_precision import MixedPrecisionPass
from .accuracy_gate import AccuracyGatePass
from .base import ConversionContext, Pass
from .cleanup import CleanupPass
from .host_benchmark import HostBenchmarkPass
from .import_model import ImportPass
from .package import PackagePass
from .selftest import SelfTestPass
from .quantize_onnx import QuantizePass

__all__ = [
    "AccuracyGatePass",
    "CleanupPass",
    "ConversionContext",
    "HostBenchmarkPass",
    "ImportPass",
    "MixedPrecisionPass",
    "Pass",
    "PackagePass",
    "QuantizePass",
    "SelfTestPass",
]
