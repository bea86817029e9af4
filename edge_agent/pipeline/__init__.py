"""Sources -> preprocess -> infer -> postprocess -> sinks, as small stages."""
