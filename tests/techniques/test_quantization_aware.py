"""Tests for quantization-aware training (`qat`): the fake-quantized model, its calibration, and
its int8 export, which must compute what the fake-quantized PyTorch model computes."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import torch
import yaml

from textcompress.config import DEFAULTS
from textcompress.data import load_split
from textcompress.deploy.export import export_onnx, parity_batch
from textcompress.deploy.inference import make_session, run_logits
from textcompress.models.encoder import FakeQuantEmbedding, FakeQuantLinear, load_bundle, save_bundle, set_fake_quant
from textcompress.deploy.quantization import calibration_batches, int8_from_fake_quant
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.quantization_aware import apply_qat, calibrate_input_ranges, fake_quantized
from textcompress.training import predict_logits

# Logit tolerance between ONNX Runtime's integer kernels and PyTorch's fake quantization of the same
# model: both round the same values to the same grid, but ONNX Runtime requantizes nothing in
# between and sums in int32, so only float rounding differs (measured: about 1e-5 on the tiny model).
INT8_LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def ctx(tiny_teacher, tiny_prepared):
    teacher, train = load_bundle(tiny_teacher)[0], load_split(tiny_prepared, "train")
    return TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)


@pytest.fixture(scope="module")
def teacher(ctx):
    return ctx.teacher


@pytest.fixture(scope="module")
def qat_model(teacher, ctx):
    args = {**TECHNIQUES["qat"].defaults, "calibration": 64, "epochs": 1.0, "lr": 1e-3, "batch_size": 16}
    model, details = apply_qat(copy.deepcopy(teacher), args, ctx)
    return model, details


def test_fake_quantized_model_in_fp32_is_the_original(teacher, tiny_prepared):
    quantized = fake_quantized(copy.deepcopy(teacher))
    linears = [m for m in quantized.modules() if isinstance(m, FakeQuantLinear)]
    assert len(linears) == 6 * teacher.config.num_layers  # query, key, value, attention output, FFN in and out
    assert isinstance(quantized.embeddings.word_embeddings, FakeQuantEmbedding)
    assert not isinstance(quantized.classifier, FakeQuantLinear)
    ids, mask = (torch.from_numpy(a) for a in parity_batch(load_split(tiny_prepared, "validation")))
    set_fake_quant(quantized, False)
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids, mask), teacher(ids, mask), rtol=0, atol=1e-6)


def test_qat_refuses_relaxed_sharing_whose_shared_weights_it_would_leave_fp32(teacher):
    from textcompress.techniques.sharing import share_layers

    relaxed = share_layers(copy.deepcopy(teacher), groups=1, delta_rank=2)
    with pytest.raises(ValueError, match="relaxed sharing"):
        fake_quantized(relaxed)


def test_calibration_takes_each_inputs_observed_range(teacher, ctx):
    quantized = fake_quantized(copy.deepcopy(teacher))
    batch = calibration_batches(ctx.train, 16, batch_size=16)
    seen = {}
    query = quantized.encoder.layer[1].attention.self.query
    handle = query.register_forward_pre_hook(lambda m, inputs: seen.update(low=inputs[0].min(), high=inputs[0].max()))
    ranges = calibrate_input_ranges(quantized, batch)
    handle.remove()
    assert len(batch) == 1
    torch.testing.assert_close(query.input_range, torch.stack([seen["low"], seen["high"]]))
    assert ranges["encoder.layer.1.attention.self.query"] == pytest.approx([float(seen["low"]), float(seen["high"])], abs=1e-4)
    # With the ranges calibrated, every FFN-output input of the batch lies inside its range.
    ffn_out = quantized.encoder.layer[0].output.dense
    assert ffn_out.input_range[0] < 0 < ffn_out.input_range[1]


def test_quantization_changes_the_forward_pass(qat_model, tiny_prepared):
    model, _ = qat_model
    ids, mask = (torch.from_numpy(a) for a in parity_batch(load_split(tiny_prepared, "validation")))
    with torch.no_grad():
        quantized = model(ids, mask)
        set_fake_quant(model, False)
        fp32 = model(ids, mask)
        set_fake_quant(model, True)
    difference = float((quantized - fp32).abs().max())
    assert 0 < difference < 0.5  # rounding moves the logits, a little


def test_qat_trains_and_records_what_it_did(qat_model, ctx):
    model, details = qat_model
    assert details["quantized_linears"] == 12 and details["calibration_sentences"] == 64
    assert len(details["history"]) == 1
    accuracy = float((predict_logits(model, ctx.validation).argmax(-1) == ctx.validation.labels).mean())
    assert accuracy >= 0.9


def test_a_qat_model_reloads_with_its_ranges(qat_model, tiny_prepared, tmp_path):
    model, _ = qat_model
    save_bundle(model, tmp_path / "qat", tiny_prepared / "tokenizer.json", ["negative", "positive"])
    reloaded, _ = load_bundle(tmp_path / "qat")
    ids, mask = (torch.from_numpy(a) for a in parity_batch(load_split(tiny_prepared, "validation")))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), model(ids, mask), rtol=0, atol=0)


@pytest.fixture(scope="module")
def int8_file(qat_model, tmp_path_factory):
    model, _ = qat_model
    root = tmp_path_factory.mktemp("qat_onnx")
    export_onnx(model, root / "fake_quant.onnx")
    details = int8_from_fake_quant(root / "fake_quant.onnx", root / "int8.onnx")
    set_fake_quant(model, False)
    export_onnx(model, root / "fp32.onnx")
    set_fake_quant(model, True)
    return root, details


def initializer_bytes(path) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def test_the_int8_file_stores_int8_weights(int8_file):
    root, details = int8_file
    model = onnx.load(str(root / "int8.onnx"))
    onnx.checker.check_model(model)  # plain ONNX: ONNX Runtime's basic optimizations add no contrib operators
    assert {n.domain for n in model.graph.node} == {""}
    graph = model.graph
    int8 = [i for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    big_float = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= 32 * 32]
    assert len(int8) >= 12 and details["int8_gathers"] == 2
    assert big_float == []  # no weight matrix or table is left in fp32
    # The tiny graph's own bytes dominate its file, so compare the tensors' bytes.
    assert initializer_bytes(root / "int8.onnx") < 0.4 * initializer_bytes(root / "fp32.onnx")


def test_the_int8_file_runs_integer_kernels(int8_file, tmp_path):
    root, _ = int8_file
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(root / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 12
    # Tables are gathered as uint8 rows: no Dequantize reads a whole table on every call.
    assert ops.count("DequantizeLinear") <= 2


def test_the_int8_file_matches_the_fake_quant_model(qat_model, int8_file, tiny_prepared):
    model, _ = qat_model
    root, _ = int8_file
    validation = load_split(tiny_prepared, "validation")
    ids, mask = parity_batch(validation)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = run_logits(make_session(root / "int8.onnx"), ids, mask)
    assert np.abs(got - expected).max() < INT8_LOGIT_TOLERANCE


def test_the_export_stage_writes_int8_and_its_fp32_parent(qat_model, tiny_prepared, tmp_path):
    from textcompress.stages.export import main as export_main

    model, _ = qat_model
    save_bundle(model, tmp_path / "bundle", tiny_prepared / "tokenizer.json", ["negative", "positive"])
    params = copy.deepcopy(DEFAULTS)
    params["data"]["max_length"] = 32
    params["candidates"] = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}], "qat-int8": [{"qat": {"calibration": 64}}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "onnx"
    export_main(["qat-int8", "--params", str(tmp_path / "params.yaml"), "--prepared", str(tiny_prepared),
                 "--model", str(tmp_path / "bundle"), "--out", str(out)])
    report = json.loads((out / "export.json").read_text())
    assert report["parity_ok"]  # the fp32 parent is an exact export
    (step,) = report["steps"]
    assert step["technique"] == "qat" and step["details"]["max_abs_diff_to_fake_quant"] < INT8_LOGIT_TOLERANCE
    assert step["details"]["label_agreement_with_fake_quant"] == 1.0
    assert report["agreement_ok"] and report["label_agreement_with_fp32"] >= 0.95
    assert initializer_bytes(out / "parent.onnx") > 2.5 * initializer_bytes(out / "model.onnx")
