"""Tests for textcompress.techniques.decomposition: SVD factors reproduce the layer at full rank,
ranks follow the rule asked for, layers that would not shrink stay dense, and the factorised
embedding starts from the teacher's table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textcompress.data import load_split, pad_batch
from textcompress.deploy.export import export_onnx, parity_max_abs_diff
from textcompress.models.encoder import LowRankLinear, TextClassifier, count_parameters, load_bundle, save_bundle
from textcompress.deploy.quantization import calibration_batches
from textcompress.techniques.decomposition import (choose_rank, factorize_embedding, factorize_linear, input_grams,
                                                   low_rank, spectrum, target_names)

from tests.conftest import tiny_model_config


def random_model(layers: int = 2, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(tiny_model_config(layers=layers)).eval()


def test_full_rank_factors_reproduce_the_linear_and_truncation_is_the_best_low_rank():
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    x = torch.randn(5, 24)
    torch.testing.assert_close(factorize_linear(linear, 16)(x), linear(x), atol=1e-5, rtol=1e-5)
    w = linear.weight.detach()
    s = torch.linalg.svdvals(w)
    f = factorize_linear(linear, 4)
    approx = f.up.weight @ f.down.weight
    # Eckart–Young: the truncation error equals the norm of the dropped singular values.
    assert torch.linalg.matrix_norm(w - approx).item() == pytest.approx(s[4:].norm().item(), rel=1e-4)


def test_choose_rank_by_fixed_ratio_and_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energy 16, 4, 1, 1 of 22
    assert choose_rank(s, rank=2) == 2 and choose_rank(s, rank=9) == 4
    assert choose_rank(s, ratio=0.5) == 2
    assert choose_rank(s, energy=0.7) == 1 and choose_rank(s, energy=0.9) == 2 and choose_rank(s, energy=0.99) == 4
    with pytest.raises(ValueError, match="one of"):
        choose_rank(s)


def test_low_rank_replaces_ffn_linears_records_ranks_and_skips_what_would_not_shrink(tiny_prepared, tmp_path):
    model = random_model()
    factored, ranks = low_rank(model, modules="ffn", rank=4)
    assert isinstance(factored.encoder.layer[0].intermediate.dense, LowRankLinear)
    assert isinstance(factored.encoder.layer[0].attention.self.query, nn.Linear)
    assert ranks["encoder.layer.1.output.dense"] == 4
    assert count_parameters(factored) < count_parameters(model)
    _, dense = low_rank(model, modules="attention", rank=30)  # 30·(32+32) > 32·32
    assert all(str(v).startswith("dense") for v in dense.values())

    save_bundle(factored, tmp_path / "b", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "b")
    ids, mask = pad_batch(load_split(tiny_prepared, "validation").input_ids[:8])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), factored(ids, mask))
    export_onnx(reloaded, tmp_path / "m.onnx")
    assert parity_max_abs_diff(reloaded, tmp_path / "m.onnx", load_split(tiny_prepared, "validation")) < 1e-4


def test_full_rank_low_rank_model_computes_what_the_original_does(tiny_prepared):
    model = random_model()
    factored, _ = low_rank(model, modules="ffn", ratio=1.0)  # nothing shrinks: all stay dense
    assert factored.config.low_rank == {}
    ids, mask = pad_batch(load_split(tiny_prepared, "validation").input_ids[:8])
    with torch.no_grad():
        torch.testing.assert_close(factored(ids, mask), model(ids, mask))


def test_factorized_embedding_starts_from_the_best_rank_e_table(tiny_prepared, tmp_path):
    model = random_model()
    small = factorize_embedding(model, 8)
    assert small.embeddings.word_embeddings.weight.shape == (model.config.vocab_size, 8)
    table = model.embeddings.word_embeddings.weight.detach()
    rebuilt = small.embeddings.word_projection(small.embeddings.word_embeddings.weight).detach()
    s = torch.linalg.svdvals(table)
    assert torch.linalg.matrix_norm(table - rebuilt).item() == pytest.approx(s[8:].norm().item(), rel=1e-3)
    full = factorize_embedding(model, model.config.hidden_size - 1)
    ids, mask = pad_batch(load_split(tiny_prepared, "validation").input_ids[:8])
    save_bundle(small, tmp_path / "e", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "e")
    assert reloaded.config.embedding_size == 8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), small(ids, mask))
        assert (full(ids, mask) - model(ids, mask)).abs().max() < (small(ids, mask) - model(ids, mask)).abs().max()
    with pytest.raises(ValueError, match="below the hidden size"):
        factorize_embedding(model, 32)


def anisotropic_inputs(n: int = 400, width: int = 24, seed: int = 0) -> torch.Tensor:
    """Inputs whose variance differs by 1000× across directions, as transformer activations' do."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, width)
    return torch.randn(n, width, generator=g) * scales @ torch.linalg.qr(torch.randn(width, width, generator=g))[0]


def test_activation_fit_is_exact_at_full_rank_and_the_best_for_the_data_when_truncated():
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    x = anisotropic_inputs().double()
    gram = x.T @ x
    full = factorize_linear(linear, 16, gram)
    torch.testing.assert_close((full.up.weight @ full.down.weight).double(), linear.weight.double(), atol=1e-4, rtol=1e-4)

    w = linear.weight.detach().double()
    fitted, plain = factorize_linear(linear, 4, gram), factorize_linear(linear, 4)

    def output_error(f):
        return torch.linalg.matrix_norm((w - (f.up.weight @ f.down.weight).double()) @ x.T).item()

    # Optimal on the data: the error is the norm of the dropped singular values of W·L ...
    assert output_error(fitted) == pytest.approx(spectrum(linear, gram)[4:].norm().item(), rel=1e-3)
    # ... and well below what the weight-optimal truncation leaves on these inputs.
    assert output_error(fitted) < 0.5 * output_error(plain)


def test_input_grams_sum_the_real_tokens_inputs_only(tiny_prepared):
    model = random_model()
    batches = calibration_batches(load_split(tiny_prepared, "train"), 24, batch_size=8)
    name = "encoder.layer.0.intermediate.dense"
    grams = input_grams(model, [name], batches)
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            model(torch.from_numpy(b["input_ids"]), torch.from_numpy(b["attention_mask"]))
    handle.remove()
    real = torch.cat([x[torch.from_numpy(b["attention_mask"]).bool()] for x, b in zip(seen, batches)]).double()
    assert any((b["attention_mask"] == 0).any() for b in batches)  # padding was there to leave out
    torch.testing.assert_close(grams[name], real.T @ real)


def test_low_rank_fit_to_activations_keeps_the_model_closer_than_the_plain_svd(tiny_prepared):
    model = random_model()
    train = load_split(tiny_prepared, "train")
    names = target_names(model, "ffn")
    grams = input_grams(model, names, calibration_batches(train, 64))
    fitted, ranks = low_rank(model, "ffn", rank=6, grams=grams)
    plain, _ = low_rank(model, "ffn", rank=6)
    assert ranks["encoder.layer.0.intermediate.dense"] == 6 and isinstance(fitted.encoder.layer[0].intermediate.dense, LowRankLinear)
    assert count_parameters(fitted) == count_parameters(plain)
    ids, mask = pad_batch(train.input_ids[:64])
    with torch.no_grad():
        reference = model(ids, mask)
        assert (fitted(ids, mask) - reference).abs().mean() < (plain(ids, mask) - reference).abs().mean()


def test_frequency_weighted_embedding_serves_the_frequent_pieces_better():
    torch.manual_seed(0)
    model = random_model()
    vocab = model.config.vocab_size
    weights = torch.ones(vocab)
    frequent = torch.arange(0, vocab, 7)
    weights[frequent] = 1000.0
    table = model.embeddings.word_embeddings.weight.detach()

    def row_errors(small):
        rebuilt = small.embeddings.word_projection(small.embeddings.word_embeddings.weight).detach()
        return ((table - rebuilt) ** 2).sum(1)

    weighted, plain = row_errors(factorize_embedding(model, 8, weights)), row_errors(factorize_embedding(model, 8))
    assert (weights * weighted).sum() < (weights * plain).sum()
    assert weighted[frequent].sum() < 0.5 * plain[frequent].sum()
    assert weighted.sum() > plain.sum()  # plain SVD is still the best over all rows alike


def test_recovery_records_the_accuracy_the_change_alone_left(tiny_prepared, tiny_teacher):
    import numpy as np

    from textcompress.techniques import TechniqueContext
    from textcompress.techniques import TECHNIQUES
    from textcompress.techniques.decomposition import apply_low_rank
    from textcompress.training import accuracy, predict_logits

    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["low_rank"].defaults, "modules": "all", "rank": 2, "fit": "activations", "calibration": 64}
    untrained, _ = apply_low_rank(teacher, {**args, "epochs": 0}, ctx)
    _, details = apply_low_rank(teacher, {**args, "epochs": 1, "lr": 1e-3}, ctx)
    assert details["fit"] == "activations" and details["calibration_sentences"] == 64
    before = details["history"][0]["validation_accuracy_before"]
    assert before == accuracy(predict_logits(untrained, validation), validation.labels)
    assert np.isfinite(details["history"][0]["validation_accuracy"])
