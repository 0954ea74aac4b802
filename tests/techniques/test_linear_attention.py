"""Tests for the linear-attention variants (textcompress.modeling.SelfAttention and
textcompress.techniques.linear_attention): padding changes nothing, the teacher's weights carry
over, and every variant exports to ONNX with a dynamic sequence length."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_batch
from textcompress.export import export_onnx
from textcompress.inference import make_session, run_logits
from textcompress.modeling import TextClassifier, load_bundle, save_bundle
from textcompress.stages.compress import CompressContext
from textcompress.techniques import TECHNIQUES
from textcompress.techniques.linear_attention import apply_attention, swap_attention
from textcompress.training import predict_logits

from tests.conftest import tiny_model_config

KINDS = ["linear", "performer", "linformer"]


def model_of(kind: str, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(replace(tiny_model_config(), attention=kind, linformer_length=8, performer_features=16)).eval()


@pytest.mark.parametrize("kind", ["softmax"] + KINDS)
def test_padding_changes_nothing(kind):
    model = model_of(kind)
    ids = torch.randint(5, 30, (1, 9))
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))
        padded_ids = torch.cat([ids, torch.full((1, 7), 17)], dim=1)  # junk, not even the pad id
        mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 7)], dim=1).long()
        padded = model(padded_ids, mask)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_linear_attention_is_the_normalised_kernel_sum():
    model = model_of("linear")
    attn = model.encoder.layer[0].attention.self
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 1, 5, 8) for _ in range(3))
    keep = torch.ones(1, 1, 5, 1)
    phi = lambda t: torch.nn.functional.elu(t) + 1  # noqa: E731
    weights = phi(q) @ phi(k).transpose(-1, -2)
    expected = (weights / weights.sum(-1, keepdim=True)) @ v  # the quadratic form
    torch.testing.assert_close(attn._linear(q, k, v, keep), expected, atol=1e-5, rtol=1e-4)


def test_performer_features_estimate_softmax_attention():
    torch.manual_seed(0)
    config = replace(tiny_model_config(), attention="performer", performer_features=4096, num_heads=1)
    attn = TextClassifier(config).encoder.layer[0].attention.self
    q, k, v = (0.3 * torch.randn(1, 1, 6, 32) for _ in range(3))
    exact = ((q @ k.transpose(-1, -2)) / 32 ** 0.5).softmax(-1) @ v
    approx = attn._performer(q, k, v, torch.ones(1, 1, 6, 1))
    assert (approx - exact).abs().max() < 0.05
    before = attn.features.clone()
    attn.redraw_features()
    assert not torch.equal(before, attn.features)


@pytest.mark.parametrize("kind", KINDS)
def test_swap_keeps_the_teachers_weights(kind):
    teacher = model_of("softmax")
    swapped = swap_attention(teacher, kind, features=16, length=8)
    assert swapped.config.attention == kind
    for name, value in teacher.state_dict().items():
        assert torch.equal(swapped.state_dict()[name], value), name
    with pytest.raises(ValueError, match="already uses"):
        swap_attention(swapped, "linear")


@pytest.mark.parametrize("kind", KINDS)
def test_each_variant_exports_with_dynamic_sequence_length(kind, tiny_prepared, tmp_path):
    model = model_of(kind)
    save_bundle(model, tmp_path / "b", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "b")
    export_onnx(reloaded, tmp_path / "m.onnx")
    session = make_session(tmp_path / "m.onnx")
    for length in (3, 17, 64):  # 64 = the tiny model's maximum length (Linformer's limit)
        ids = torch.randint(5, 30, (2, length))
        mask = torch.ones_like(ids)
        mask[1, length // 2:] = 0
        with torch.no_grad():
            expected = reloaded(ids, mask).numpy()
        got = run_logits(session, ids.numpy(), mask.numpy())
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_apply_attention_recovers_with_redraws(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = CompressContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["attention"].defaults, "kind": "performer", "features": 16, "redraw": 2, "epochs": 1, "lr": 1e-3}
    swapped, details = apply_attention(copy.deepcopy(teacher), args, ctx)
    assert details["kind"] == "performer" and len(details["history"]) == 1
    assert teacher.config.attention == "softmax"
