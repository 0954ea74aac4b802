"""Post-training quantization (the `quantize` recipe step), at the ONNX level in `export`:
ONNX Runtime dynamic or static (QDQ, calibrated) int8, or fp16 for GPU targets. The graph work
itself is in textcompress/deploy/quantization.py, beside the other ONNX tools; quantization-aware
training is in quantization_aware.py.
"""

from __future__ import annotations

from textcompress.deploy.quantization import apply_quantize
from textcompress.techniques.base import Technique

TECHNIQUES = (
    Technique(
        "quantize", "quantization",
        # dynamic: int8 weights, activations scaled per batch; static: int8 QDQ calibrated on
        # `calibration` training sentences with `method`; fp16: half-precision weights (for GPUs).
        # `exclude`: operator types or node-name fragments kept in fp32 (e.g. LayerNormalization,
        # Softmax, classifier); `sensitivity` > 0 adds the N MatMuls whose quantization alone
        # moves the logits most. `reduce_range`: 7-bit weights (for CPUs without VNNI).
        defaults={"mode": "dynamic", "per_channel": False, "calibration": 256, "method": "minmax",
                  "exclude": [], "sensitivity": 0, "reduce_range": False},
        choices={"mode": ("dynamic", "static", "fp16"), "method": ("minmax", "entropy", "percentile")},
        bounds={"calibration": (1, None), "sensitivity": (0, None)},
        models=("transformer", "transformers", "recurrent", "cnn"), export=apply_quantize,
    ),
)
