"""Tests for textcompress.export: ONNX export with dynamic axes, parity, quantized export, sizes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_arrays
from textcompress.export import export_onnx, label_agreement, onnx_size_bytes, parity_max_abs_diff
from textcompress.inference import make_session, run_logits
from textcompress.modeling import load_bundle
from textcompress.quantization import apply_quantize

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
    from textcompress.export import compressed_size_bytes

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
