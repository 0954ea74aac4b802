"""Tests for textcompress.models.hf_classifier: DeBERTa-v2 and ModernBERT classifiers, which do not
convert into the encoder, run in transformers as teachers: their logits in the data's label order,
a bundle that reloads the same model, and an ONNX export that matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textcompress.data import pad_arrays
from textcompress.deploy.export import export_onnx
from textcompress.deploy.inference import make_session, run_logits
from textcompress.models.checkpoints import load_teacher
from textcompress.models.encoder import load_bundle, save_bundle
from textcompress.models.hf_classifier import HFClassifier

from tests.conftest import CLS_ID, SEP_ID
from tests.e2e.tiny_project import write_hf_checkpoint

KINDS = ["deberta-v2", "modernbert"]


def batch():
    ids, mask = pad_arrays([np.array([CLS_ID, 10, 11, 12, SEP_ID]), np.array([CLS_ID, 13, SEP_ID, 14, 15, 16, SEP_ID])])
    return torch.from_numpy(ids), torch.from_numpy(mask)


@pytest.mark.parametrize("kind", KINDS)
def test_a_classifier_that_does_not_convert_runs_in_transformers_with_the_datas_label_order(kind, tmp_path):
    reference = write_hf_checkpoint(tmp_path / kind, kind, initializer_range=0.3,
                                    id2label={0: "pos", 1: "neg"}, label2id={"pos": 0, "neg": 1})
    teacher = load_teacher(tmp_path / kind, ["neg", "pos"]).eval()
    assert isinstance(teacher, HFClassifier) and teacher.config.label_rows == [1, 0]
    ids, mask = batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits[:, [1, 0]]
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(teacher(ids, mask), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_its_bundle_reloads_the_same_model_and_its_onnx_export_matches(kind, tmp_path, tiny_tokenizer_file):
    write_hf_checkpoint(tmp_path / kind, kind, initializer_range=0.3)
    teacher = load_teacher(tmp_path / kind, [0, 1]).eval()
    save_bundle(teacher, tmp_path / "bundle", tiny_tokenizer_file, [0, 1])
    reloaded, labels = load_bundle(tmp_path / "bundle")
    ids, mask = batch()
    with torch.no_grad():
        expected = teacher(ids, mask)
        torch.testing.assert_close(reloaded(ids, mask), expected, atol=0, rtol=0)
    export_onnx(reloaded, tmp_path / "model.onnx")
    got = run_logits(make_session(tmp_path / "model.onnx"), ids.numpy(), mask.numpy())
    assert labels == [0, 1] and np.abs(got - expected.numpy()).max() < 1e-4


def test_a_base_that_does_not_convert_gets_a_fresh_head_of_the_datas_labels(tmp_path):
    write_hf_checkpoint(tmp_path / "deberta", "deberta-v2", classifier=False)
    teacher = load_teacher(tmp_path / "deberta", ["a", "b", "c"])
    ids, mask = batch()
    assert isinstance(teacher, HFClassifier) and teacher(ids, mask).shape == (2, 3)
