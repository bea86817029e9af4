"""ONNX Runtime tooling: static QDQ int8 with cached calibration, int4 weight-only, exact graph folds,
input-shape pinning, already-quantized (QDQ) models, per-layer activation error, model I/O."""
