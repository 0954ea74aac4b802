"""The ONNX side: export with a parity check, post-training quantization, ONNX Runtime sessions,
the benchmarks, and the MLflow model that serves raw text."""
