"""Quantization at the ONNX level, with ONNX Runtime's quantizer.

`mode: dynamic`: int8 weights (MatMul and the embedding Gather), activations quantized on
the fly per batch; no calibration data. This is also the peer baseline (`int8-dynamic`):
what most users would do instead of this pipeline.
"""

from __future__ import annotations

from pathlib import Path


def apply_quantize(onnx_in: Path, onnx_out: Path, args: dict, ctx=None) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if args["mode"] != "dynamic":
        raise ValueError(f"quantize: mode {args['mode']!r} is not available")
    quantize_dynamic(str(onnx_in), str(onnx_out), weight_type=QuantType.QInt8, per_channel=bool(args["per_channel"]))
    return {"mode": "dynamic", "weights": "int8", "per_channel": bool(args["per_channel"]),
            "bytes_before": Path(onnx_in).stat().st_size, "bytes_after": Path(onnx_out).stat().st_size}
