"""TFLite tooling: ONNX -> TFLite through onnx2tf, int8 with a layer/op deny-list (QuantizationDebugger,
XNNPACK partitions), model I/O through the agent's LiteRT code."""
