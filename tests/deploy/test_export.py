"""Tests for textcompress.deploy.export: ONNX export with dynamic axes, parity, quantized export, sizes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_arrays
import onnx

from textcompress.deploy.export import export_onnx, fused_attention, label_agreement, onnx_size_bytes, parity_max_abs_diff
from textcompress.deploy.inference import UNFUSED, make_session, run_logits
from textcompress.models.encoder import SelfAttention, load_bundle
from textcompress.deploy.quantization import apply_quantize

from tests.conftest import CLS_ID, SEP_ID, TINY_VOCAB

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return load_bundle(tiny_teacher)[0]


@pytest.fixture(scope="module")
def fp32_onnx(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "fp32.onnx"
    export_onnx(teacher, path)
    return path


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx):
    path = fp32_onnx.with_name("int8.onnx")
    details = apply_quantize(fp32_onnx, path, {"mode": "dynamic", "per_channel": False})
    return path, details


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def sentence_ids(words: list[str]) -> np.ndarray:
    return np.array([CLS_ID] + [TINY_VOCAB[w] for w in words] + [SEP_ID], dtype=np.int64)


def batches_unlike_the_trace():
    """The export traces a batch of 2 rows, 5 tokens; these differ in batch size and length."""
    rng = np.random.default_rng(0)
    words = [w for w in TINY_VOCAB if not w.startswith("[")]

    def random_sentence(n):
        return sentence_ids(list(rng.choice(words, size=n)))

    return {
        "batch 1": pad_arrays([sentence_ids("the movie was great .".split())]),
        "batch 5, padded": pad_arrays([random_sentence(n) for n in (1, 9, 4, 14, 6)]),
        "long sequence": pad_arrays([random_sentence(50), random_sentence(20)]),
    }


@pytest.mark.parametrize("case", list(batches_unlike_the_trace()))
def test_fp32_export_matches_pytorch_on_other_batch_shapes(teacher, fp32_onnx, case):
    ids, mask = batches_unlike_the_trace()[case]
    got = run_logits(make_session(fp32_onnx), ids, mask)
    expected = torch_logits(teacher, ids, mask)
    assert got.shape == expected.shape == (ids.shape[0], 2)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_export_declares_dynamic_batch_and_sequence_axes(fp32_onnx):
    session = make_session(fp32_onnx)
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for shape in inputs.values():
        assert len(shape) == 2 and all(isinstance(d, str) for d in shape), shape
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_export_leaves_the_model_in_eval_mode(tiny_teacher, tmp_path):
    model = load_bundle(tiny_teacher)[0].train()
    export_onnx(model, tmp_path / "m.onnx")
    assert not model.training


def test_parity_on_tiny_validation_is_within_tolerance(teacher, fp32_onnx, tiny_prepared):
    assert parity_max_abs_diff(teacher, fp32_onnx, load_split(tiny_prepared, "validation")) <= TOLERANCE


def test_parity_detects_a_model_that_differs_from_the_export(teacher, fp32_onnx, tiny_prepared):
    import copy

    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.classifier.bias.add_(0.5)
    assert parity_max_abs_diff(changed, fp32_onnx, load_split(tiny_prepared, "validation")) == pytest.approx(0.5, abs=1e-4)


def test_dynamic_int8_export_is_smaller_and_agrees_with_fp32(fp32_onnx, int8_onnx, tiny_prepared):
    path, details = int8_onnx
    assert path.stat().st_size < fp32_onnx.stat().st_size
    assert details["bytes_before"] == fp32_onnx.stat().st_size and details["bytes_after"] == path.stat().st_size
    assert details["mode"] == "dynamic" and details["weights"] == "int8"
    assert label_agreement(fp32_onnx, path, load_split(tiny_prepared, "validation")) >= 0.9


def test_label_agreement_of_a_model_with_itself_is_one(fp32_onnx, tiny_prepared):
    assert label_agreement(fp32_onnx, fp32_onnx, load_split(tiny_prepared, "validation")) == 1.0


def test_onnx_size_bytes_counts_graph_and_external_data_not_the_tokenizer(tmp_path):
    sizes = {"model.onnx": 1000, "model.onnx.data": 250, "weights.data": 30,
             "tokenizer.json": 5000, "labels.json": 7, "export.json": 90}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    assert onnx_size_bytes(tmp_path) == 1000 + 250 + 30


def test_onnx_size_bytes_of_a_real_export_is_the_file_size(fp32_onnx, tiny_tokenizer_file, tmp_path):
    shutil.copyfile(fp32_onnx, tmp_path / "model.onnx")
    shutil.copyfile(tiny_tokenizer_file, tmp_path / "tokenizer.json")
    assert onnx_size_bytes(tmp_path) == fp32_onnx.stat().st_size


def test_compressed_size_shrinks_with_zeros(tmp_path):
    from textcompress.deploy.export import compressed_size_bytes

    rng = np.random.default_rng(0)
    dense = rng.standard_normal(100_000).astype(np.float32)
    sparse = dense.copy()
    sparse[rng.random(100_000) < 0.8] = 0.0
    (tmp_path / "dense.onnx").write_bytes(dense.tobytes())
    (tmp_path / "sparse.onnx").write_bytes(sparse.tobytes())
    assert compressed_size_bytes(tmp_path / "sparse.onnx") < 0.5 * compressed_size_bytes(tmp_path / "dense.onnx")
    assert compressed_size_bytes(tmp_path / "dense.onnx") <= 1.01 * dense.nbytes


def test_the_fp32_parent_is_not_counted_in_the_size(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 100)
    (tmp_path / "parent.onnx").write_bytes(b"x" * 400)
    assert onnx_size_bytes(tmp_path) == 100


def weight_matmuls(path) -> list:
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def test_fused_attention_stacks_qkv_into_one_product_per_layer(teacher, fp32_onnx, tmp_path):
    plain = tmp_path / "plain.onnx"
    export_onnx(teacher, plain, fuse_attention=False)
    layers = teacher.config.num_layers
    # Plain: Q, K, V, attention output, FFN in and out per layer. Fused: Q/K/V are one product.
    assert len(weight_matmuls(plain)) == 6 * layers
    assert len(weight_matmuls(fp32_onnx)) == 4 * layers
    stacked = [n for n in weight_matmuls(fp32_onnx) if "/self/" in n.name]
    inits = {i.name: i for i in onnx.load(str(fp32_onnx)).graph.initializer}
    inner = teacher.encoder.layer[0].attention.self.query.out_features
    assert len(stacked) == layers and all(3 * inner in inits[n.input[1]].dims for n in stacked)


def test_fused_attention_computes_what_the_plain_export_does(teacher, fp32_onnx, tmp_path):
    plain = tmp_path / "plain.onnx"
    export_onnx(teacher, plain, fuse_attention=False)
    for ids, mask in batches_unlike_the_trace().values():
        fused_logits = run_logits(make_session(fp32_onnx), ids, mask)
        assert np.abs(fused_logits - run_logits(make_session(plain), ids, mask)).max() <= 1e-5


def test_fused_attention_reshapes_heads_without_shape_arithmetic(fp32_onnx, tmp_path):
    nodes = onnx.load(str(fp32_onnx)).graph.node
    attention = [n for n in nodes if "/attention/self/" in n.name]
    assert not any(n.op_type in ("Shape", "Concat") for n in attention)


def test_fused_attention_restores_the_models_own_forward(tiny_teacher):
    model = load_bundle(tiny_teacher)[0]
    with fused_attention(model) as patched:
        assert patched == model.config.num_layers
        assert all("forward" in vars(m) for m in model.modules() if isinstance(m, SelfAttention))
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, SelfAttention))


def test_fused_attention_leaves_shared_weights_unstacked(tiny_teacher):
    model = load_bundle(tiny_teacher)[0]
    model.encoder.layer[1].attention = model.encoder.layer[0].attention  # ALBERT-style tying
    with fused_attention(model) as patched:
        assert patched == model.config.num_layers - 2  # the shared module is left as it is


def test_sessions_run_without_the_skip_layer_norm_fusion(tmp_path):
    """The fusion is disabled by name; a name ONNX Runtime does not know would be ignored silently."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    hidden = 8
    scale, shift = (numpy_helper.from_array(np.full(hidden, v, np.float32), n) for n, v in (("scale", 1.0), ("shift", 0.0)))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "residual"], ["sum"]),
         helper.make_node("LayerNormalization", ["sum", "scale", "shift"], ["y"], axis=-1)], "residual_norm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "sequence", hidden]) for n in ("x", "residual")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, shift])
    model = tmp_path / "residual_norm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))

    def optimized_ops(disabled):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"optimized{len(disabled)}.onnx")
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}

    assert optimized_ops([]) == {"SkipLayerNormalization"}
    assert optimized_ops(UNFUSED) == {"Add", "LayerNormalization"}


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "electra"])
def test_a_converted_checkpoint_exports_with_transformers_logits_on_pairs(kind, tmp_path):
    """Separator-derived token types, RoBERTa's position offset, ELECTRA's projection and a fine-tuned
    head all survive the ONNX export: the graph gives transformers' logits on padded pairs."""
    from textcompress.models.checkpoints import from_pretrained
    from tests.e2e.tiny_project import write_hf_checkpoint

    reference = write_hf_checkpoint(tmp_path / kind, kind, num_labels=2, initializer_range=0.3)
    rows = [[CLS_ID, 5, 6, SEP_ID], [CLS_ID, 7, 8, 9, SEP_ID, 10, 11, SEP_ID]]
    ids, mask = pad_arrays([np.array(r) for r in rows])
    types = np.array([[0] * 8, [0] * 5 + [1] * 3])
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if kind != "distilbert":
        inputs["token_type_ids"] = torch.from_numpy(types)
    with torch.no_grad():
        expected = reference(**inputs).logits.numpy()
    model = from_pretrained(tmp_path / kind, num_labels=2, separator=SEP_ID, label_rows=[0, 1])
    export_onnx(model, tmp_path / "model.onnx")
    got = run_logits(make_session(tmp_path / "model.onnx"), ids, mask)
    assert np.abs(expected).max() > 0.5 and np.abs(got - expected).max() < 1e-4
