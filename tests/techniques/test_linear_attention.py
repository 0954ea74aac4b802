"""Tests for the linear-attention variants (textcompress.models.encoder.SelfAttention and
textcompress.techniques.linear_attention): padding changes nothing, the teacher's weights carry
over, and every variant exports to ONNX with a dynamic sequence length."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_batch
from textcompress.deploy.export import export_onnx
from textcompress.deploy.inference import make_session, run_logits
from textcompress.models.encoder import TextClassifier, load_bundle, save_bundle
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.linear_attention import apply_attention, swap_attention, transfer_attention
from textcompress.training import predict_logits

from tests.conftest import tiny_model_config

KINDS = ["linear", "hedgehog", "performer", "linformer"]


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


def test_hedgehog_is_the_normalised_sum_of_its_learned_kernel():
    model = model_of("hedgehog")
    attn = model.encoder.layer[0].attention.self
    with torch.no_grad():
        attn.feature_map_q.mul_(1.5)
        attn.feature_map_k.add_(0.1)
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, attn.num_heads, 5, 8) for _ in range(3))

    def phi(t, w):
        return torch.cat([(t @ w).softmax(-1), (-(t @ w)).softmax(-1)], -1)

    weights = phi(q, attn.feature_map_q) @ phi(k, attn.feature_map_k).transpose(-1, -2)
    expected = (weights / weights.sum(-1, keepdim=True)) @ v  # the quadratic form
    torch.testing.assert_close(attn._hedgehog(q, k, v, torch.ones(1, 1, 5, 1)), expected, atol=1e-5, rtol=1e-4)


def attention_gap(model, teacher, ids, mask) -> float:
    """Mean |hidden state difference| over every layer: how far the variant's computation is from softmax's."""
    with torch.no_grad():
        return float(sum((a - b).abs().mean() for a, b in zip(model.hidden_states(ids, mask), teacher.hidden_states(ids, mask))))


def test_attention_transfer_trains_only_the_feature_maps_towards_softmax(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    swapped = swap_attention(teacher, "hedgehog")
    before = {k: v.clone() for k, v in swapped.state_dict().items()}
    ids, mask = pad_batch(load_split(tiny_prepared, "validation").input_ids[:32])
    gap_before = attention_gap(swapped, teacher, ids, mask)
    history = transfer_attention(swapped, train, steps=60, lr=0.05, batch_size=16)
    assert history[-1] < 0.7 * history[0]  # the KL to softmax weights fell
    assert attention_gap(swapped, teacher, ids, mask) < gap_before  # and the model computes closer to softmax's
    for name, value in swapped.state_dict().items():
        assert torch.equal(value, before[name]) != name.endswith(("feature_map_q", "feature_map_k")), name
    assert all(p.requires_grad for p in swapped.parameters())  # frozen only while it ran
    with pytest.raises(ValueError, match="hedgehog"):
        transfer_attention(swap_attention(teacher, "linear"), train, steps=1, lr=0.01)


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
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["attention"].defaults, "kind": "performer", "features": 16, "redraw": 2, "epochs": 1, "lr": 1e-3}
    swapped, details = apply_attention(copy.deepcopy(teacher), args, ctx)
    assert details["kind"] == "performer" and len(details["history"]) == 1
    assert teacher.config.attention == "softmax"


def test_apply_attention_runs_hedgehogs_transfer_then_recovery(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["attention"].defaults, "kind": "hedgehog", "transfer_steps": 20, "epochs": 1, "lr": 1e-3}
    swapped, details = apply_attention(copy.deepcopy(teacher), args, ctx)
    assert swapped.config.attention == "hedgehog"
    assert len(details["transfer_loss"]) == 1 and len(details["history"]) == 1
