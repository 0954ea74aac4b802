"""Tests for textcompress.deploy.quantization: static QDQ int8 calibrated on training sentences, fp16,
operators kept in fp32 by name, and the sensitivity search."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from textcompress.data import load_split
from textcompress.deploy.export import export_onnx, label_agreement
from textcompress.deploy.inference import make_session, split_logits
from textcompress.models.encoder import load_bundle
from textcompress.deploy.quantization import apply_quantize, calibration_batches
from textcompress.techniques import TECHNIQUES


@pytest.fixture(scope="module")
def fp32_onnx(tiny_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("quant") / "fp32.onnx"
    export_onnx(load_bundle(tiny_teacher)[0], path)
    return path


@pytest.fixture(scope="module")
def ctx(tiny_prepared):
    return SimpleNamespace(train=load_split(tiny_prepared, "train"), seed=0)


def args(**overrides):
    return {**TECHNIQUES["quantize"].defaults, **overrides}


def op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def initializer_bytes(path) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def test_calibration_batches_draw_the_requested_number_of_sentences(ctx):
    batches = calibration_batches(ctx.train, 50, batch_size=16)
    assert sum(b["input_ids"].shape[0] for b in batches) == 50
    assert all(b["input_ids"].shape == b["attention_mask"].shape for b in batches)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_is_qdq_and_agrees_with_fp32(fp32_onnx, ctx, tiny_prepared, tmp_path, method):
    out = tmp_path / "static.onnx"
    details = apply_quantize(fp32_onnx, out, args(mode="static", calibration=64, method=method), ctx)
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out)
    assert details["calibration_sentences"] == 64 and details["method"] == method
    # Weights are stored as int8 (the tiny graph's own bytes dominate its file size, so count tensors).
    assert initializer_bytes(out) < initializer_bytes(fp32_onnx) / 2
    assert label_agreement(fp32_onnx, out, load_split(tiny_prepared, "validation")) >= 0.9


def test_static_needs_calibration_sentences(fp32_onnx, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        apply_quantize(fp32_onnx, tmp_path / "x.onnx", args(mode="static"), None)


def test_excluded_operators_stay_fp32(fp32_onnx, ctx, tmp_path):
    out = tmp_path / "partial.onnx"
    details = apply_quantize(fp32_onnx, out, args(mode="dynamic", exclude=["classifier", "Gather"]), ctx)
    graph = onnx.load(str(out)).graph
    assert details["excluded_nodes"] >= 2
    # The head's MatMul is still a float MatMul and the embedding Gather reads a float table.
    head = [n for n in graph.node if "classifier" in n.name]
    assert head and all(n.op_type == "MatMul" or n.op_type == "Add" for n in head)
    float_inits = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in float_inits]
    assert gathers


def test_sensitivity_keeps_the_most_sensitive_matmuls(fp32_onnx, ctx, tmp_path):
    details = apply_quantize(fp32_onnx, tmp_path / "s.onnx", args(mode="dynamic", sensitivity=2, calibration=32), ctx)
    kept = details["kept_fp32_by_sensitivity"]
    assert len(kept) == 2 and kept[0]["max_logit_change"] >= kept[1]["max_logit_change"] > 0


def test_fp16_halves_the_weights_and_keeps_fp32_io(fp32_onnx, ctx, tiny_prepared, tmp_path):
    out = tmp_path / "fp16.onnx"
    details = apply_quantize(fp32_onnx, out, args(mode="fp16", exclude=["LayerNormalization"]), ctx)
    model = onnx.load(str(out))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert initializer_bytes(out) < 0.6 * initializer_bytes(fp32_onnx) and "GPU" in details["note"]
    validation = load_split(tiny_prepared, "validation")
    fp16 = split_logits(make_session(out), validation)
    fp32 = split_logits(make_session(fp32_onnx), validation)
    assert fp16.dtype == np.float32 and np.abs(fp16 - fp32).max() < 0.05


def test_static_int8_quantizes_weight_matmuls_and_leaves_their_outputs_float(fp32_onnx, ctx, tmp_path):
    out = tmp_path / "static.onnx"
    apply_quantize(fp32_onnx, out, args(mode="static", calibration=32), ctx)
    graph = onnx.load(str(out)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    with_weights = [n for n in matmuls if "_DequantizeLinear_Output" in n.input[1] or producers.get(n.input[1]) == "DequantizeLinear"]
    attention_products = [n for n in matmuls if n not in with_weights]
    # The tiny encoder has 2 layers of 4 weight MatMuls (Q/K/V stacked into one, the attention output,
    # the FFN's two); attention's two products stay float.
    assert len(with_weights) == 8 and all(producers.get(n.input[0]) == "DequantizeLinear" for n in with_weights)
    assert len(attention_products) == 4 and not any(producers.get(i) == "DequantizeLinear" for n in attention_products for i in n.input)
    consumers_of_matmuls = {n.op_type for n in graph.node for i in n.input if producers.get(i) == "MatMul"}
    assert "QuantizeLinear" not in consumers_of_matmuls


def test_reduce_range_keeps_weights_to_seven_bits(fp32_onnx, ctx, tmp_path):
    out = tmp_path / "static7.onnx"
    apply_quantize(fp32_onnx, out, args(mode="static", calibration=32, per_channel=True, reduce_range=True), ctx)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2 and i.dims[0] > 1 and i.dims[1] > 1]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
