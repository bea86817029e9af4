"""Converter passes: one module per step, each registered by name when defined (converter.passes.base).

Imported here in the order a conversion runs them, which is also the order of their options in --help.
"""

from .base import PASSES, Pass, check_pass_options, create_pass, declared_options
from .context import ConversionContext
from .import_model import ImportPass
from .cleanup import CleanupPass
from .fold_input import FoldInputPass
from .quantize_onnx import QuantizePass
from .onnx_mixed_precision import MixedPrecisionPass
from .tflite_convert import TFLiteConvertPass
from .tflite_mixed_precision import TFLiteMixedPrecisionPass
from .accuracy_gate import AccuracyGatePass
from .host_benchmark import HostBenchmarkPass
from .selftest import SelfTestPass
from .reference_stats import ReferenceStatsPass
from .package import PackagePass

__all__ = [
    "PASSES", "AccuracyGatePass", "CleanupPass", "ConversionContext", "FoldInputPass", "HostBenchmarkPass", "ImportPass",
    "MixedPrecisionPass", "PackagePass", "Pass", "QuantizePass", "ReferenceStatsPass", "SelfTestPass", "TFLiteConvertPass",
    "TFLiteMixedPrecisionPass", "check_pass_options", "create_pass", "declared_options",
]
