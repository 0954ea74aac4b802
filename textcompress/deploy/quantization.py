"""Quantization at the ONNX level, with ONNX Runtime's quantizer (the `quantize` recipe step).

- `mode: dynamic`: int8 weights (MatMul and the embedding Gather), activations quantized on
  the fly per batch; no calibration data. This is also the peer baseline (`int8-dynamic`):
  what most users would do instead of this pipeline.
- `mode: static`: int8 weights and activations as QDQ pairs, activation ranges calibrated on
  `calibration` training sentences (MinMax, Entropy or Percentile); ONNX Runtime fuses the
  pairs into integer kernels (VNNI on this CPU). Only MatMuls with a weight are quantized, and
  their outputs stay float: ONNX Runtime then fuses each into one MatMulIntegerToFloat, where
  requantizing outputs and the activation-by-activation attention products cost more time
  (extra Quantize/Dequantize nodes) and agreement (each rounding flips labels) than they save.
- `mode: fp16`: weights and compute in half precision with fp32 inputs and outputs. For GPU
  targets: CPUs without native fp16 arithmetic run it slower than fp32, and the report says so.
Both int8 modes quantize the word-piece embedding (a Gather), the bulk of a small model's
bytes; dynamic mode also quantizes LSTM weights, while GRU and Conv nodes stay fp32 and the
step's details list them (`kept_fp32_ops`). `exclude` keeps operator types or nodes (by name fragment) in fp32; `sensitivity: N`
also keeps the N MatMuls whose quantization alone moves the calibration logits most.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from textcompress.data import Split, length_bucketed_batches, pad_arrays
from textcompress.errors import RecipeError

INT8_OPS = ["MatMul", "Gather"]
# Dynamic mode also quantizes LSTM weights (ONNX Runtime's DynamicQuantizeLSTM). It has no
# int8 kernel for GRU (and none is worth it here for Conv), so those stay fp32 and are reported.
DYNAMIC_ONLY_OPS = ["LSTM"]
FP32_REPORTED_OPS = ("LSTM", "GRU", "RNN", "Conv")


def calibration_batches(split: Split, sentences: int, batch_size: int = 16, seed: int = 0,
                        same_shape: bool = False) -> list[dict]:
    """Batches of randomly drawn sentences, bucketed by length; `same_shape` pads every batch to one
    length (the histogram calibrators stack batches, so shapes must agree)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split), size=min(sentences, len(split)), replace=False)
    ids = [split.input_ids[i] for i in chosen]
    longest = max(len(x) for x in ids)
    batches = []
    for index in length_bucketed_batches([len(x) for x in ids], batch_size, shuffle=False):
        rows = [ids[i] for i in index]
        if same_shape:
            if len(rows) < batch_size:
                continue  # a short last batch would break stacking
            input_ids, mask = pad_arrays(rows)
            pad = longest - input_ids.shape[1]
            input_ids, mask = np.pad(input_ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))
        else:
            input_ids, mask = pad_arrays(rows)
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


def nodes_to_exclude(model_path: Path, exclude: list[str]) -> list[str]:
    """Node names matching an operator type exactly or containing a name fragment."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in exclude or any(f in n.name for f in exclude if f)]
    # The quantizer splits a Gemm into MatMul + Add named after it; exclude those too.
    return names + [f"{n}_{part}" for n in names if n.endswith("Gemm") for part in ("MatMul", "Add")]


def _quantize(onnx_in: Path, onnx_out: Path, args: dict, batches: list[dict], excluded: list[str],
              only: list[str] | None = None) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if args["mode"] == "dynamic":
        quantize_dynamic(str(onnx_in), str(onnx_out), weight_type=QuantType.QInt8, per_channel=bool(args["per_channel"]),
                         reduce_range=bool(args.get("reduce_range")),
                         op_types_to_quantize=INT8_OPS + DYNAMIC_ONLY_OPS, nodes_to_exclude=excluded, nodes_to_quantize=only)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.queue = iter(batches)

        def get_next(self):
            return next(self.queue, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[args["method"]]
    # Activations as unsigned int8 and weights signed: the combination x86 integer kernels (VNNI) run.
    quantize_static(str(onnx_in), str(onnx_out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OPS,
                    per_channel=bool(args["per_channel"]), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=excluded, nodes_to_quantize=only or nodes_with_weights(onnx_in),
                    reduce_range=bool(args.get("reduce_range")),
                    extra_options={"CalibMovingAverage": True, "CalibPercentile": 99.99,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul"]})


def nodes_with_weights(model_path: Path) -> list[str]:
    """MatMul and Gather nodes that read an initializer (a weight or a table), not two activations."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in INT8_OPS and any(i in weights for i in n.input)]


def most_sensitive_matmuls(onnx_in: Path, args: dict, batches: list[dict], excluded: list[str], count: int) -> list[dict]:
    """Quantize one MatMul at a time; rank by the largest logit change on the calibration batches."""
    from textcompress.deploy.inference import make_session

    graph = onnx.load(str(onnx_in), load_external_data=False).graph
    candidates = [n.name for n in graph.node if n.op_type == "MatMul" and n.name not in excluded]
    reference = make_session(onnx_in)
    expected = [reference.run(["logits"], b)[0] for b in batches]
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in candidates:
            trial = Path(tmp) / "trial.onnx"
            _quantize(onnx_in, trial, args, batches, excluded, only=[name])
            session = make_session(trial)
            change = max(float(np.abs(session.run(["logits"], b)[0] - e).max()) for b, e in zip(batches, expected))
            scores.append({"node": name, "max_logit_change": change})
    return sorted(scores, key=lambda s: -s["max_logit_change"])[:count]


def to_fp16(onnx_in: Path, onnx_out: Path, excluded: list[str]) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_in))
    # fp32 inputs/outputs keep the serving contract; LayerNorm and Softmax stay fp32 by default
    # when asked, where fp16's range overflows.
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=excluded or None)
    onnx.save(converted, str(onnx_out))


def apply_quantize(onnx_in: Path, onnx_out: Path, args: dict, ctx=None) -> dict:
    """`ctx.train`: the split calibration sentences are drawn from (static mode and sensitivity)."""
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    excluded = nodes_to_exclude(onnx_in, list(args.get("exclude") or []))
    details = {"mode": args["mode"], "per_channel": bool(args["per_channel"]), "excluded_nodes": len(excluded)}
    if args["mode"] == "fp16":
        to_fp16(onnx_in, onnx_out, excluded)
        details.update(weights="fp16", note="for GPU targets: CPUs without fp16 arithmetic run it slower than fp32")
    else:
        needs_data = args["mode"] == "static" or args.get("sensitivity")
        if needs_data and (ctx is None or ctx.train is None):
            raise RecipeError("quantize", f"mode {args['mode']} with sensitivity needs calibration sentences",
                              "pass a context with the training split (the export stage does)")
        histogram = args["mode"] == "static" and args["method"] != "minmax"
        batches = calibration_batches(ctx.train, args["calibration"], seed=ctx.seed,
                                      same_shape=histogram) if needs_data else []
        if args.get("sensitivity"):
            sensitive = most_sensitive_matmuls(onnx_in, args, batches[:4], excluded, args["sensitivity"])
            excluded += [s["node"] for s in sensitive]
            details["kept_fp32_by_sensitivity"] = sensitive
        _quantize(onnx_in, onnx_out, args, batches, excluded)
        details.update(weights="int8", activations="dynamic int8" if args["mode"] == "dynamic" else "static uint8 (QDQ)")
        if args["mode"] == "static":
            details.update(calibration_sentences=min(args["calibration"], len(ctx.train)), method=args["method"])
    details.update(bytes_before=onnx_in.stat().st_size, bytes_after=onnx_out.stat().st_size)
    kept = fp32_heavy_ops(onnx_out) if args["mode"] != "fp16" else {}
    if kept:
        details["kept_fp32_ops"] = kept
    return details


def int8_from_fake_quant(onnx_in: Path, onnx_out: Path) -> dict:
    """A fake-quantized export (the `qat` step's model) made into an int8 file.

    ONNX Runtime's basic optimizations (constant folding; portable, nothing hardware-specific)
    fold each weight's QuantizeLinear into an int8 initializer, and each table's into uint8. A
    gathered table then gets a Quantize/Dequantize pair after the Gather at the table's own scale
    (lossless): the pattern ONNX Runtime runs as a uint8 Gather, instead of dequantizing the whole
    table on every call."""
    import onnxruntime as ort
    from onnx import helper

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(onnx_out)
    ort.InferenceSession(str(onnx_in), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(onnx_out))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    tables = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 2}
    gathered = 0
    for node in list(graph.node):
        table = producers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or table.op_type != "DequantizeLinear" or table.input[0] not in tables:
            continue
        quantized, restored = f"{node.output[0]}_uint8", f"{node.output[0]}_float"
        for consumer in graph.node:
            consumer.input[:] = [restored if i == node.output[0] else i for i in consumer.input]
        position = list(graph.node).index(node) + 1
        graph.node.insert(position, helper.make_node("QuantizeLinear", [node.output[0], *table.input[1:]], [quantized],
                                                     name=f"{node.name}_QuantizeLinear"))
        graph.node.insert(position + 1, helper.make_node("DequantizeLinear", [quantized, *table.input[1:]], [restored],
                                                         name=f"{node.name}_DequantizeLinear"))
        gathered += 1
    onnx.save(model, str(onnx_out))
    return {"int8_initializers": sum(1 for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)),
            "quantize_nodes": [n.op_type for n in graph.node].count("QuantizeLinear"), "int8_gathers": gathered,
            "bytes_before": onnx_in.stat().st_size, "bytes_after": onnx_out.stat().st_size}


def fp32_heavy_ops(onnx_path: Path) -> dict[str, int]:
    """Recurrent and convolution nodes the quantizer left in fp32 (no int8 kernel for them in this mode)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type in FP32_REPORTED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
