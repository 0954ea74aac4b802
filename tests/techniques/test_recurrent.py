"""Tests for textcompress.techniques.recurrent: the families on LSTM/GRU models. Removed hidden
units compute what the masked model computes, factorised matrices reproduce the full ones at full
rank, tied directions are one module and one ONNX initializer, and every result exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from textcompress.data import load_split, pad_arrays, pad_batch
from textcompress.deploy.export import export_onnx, parity_max_abs_diff
from textcompress.models.encoder import count_parameters, load_bundle, save_bundle
from textcompress.models.recurrent import FactorizedRNN, RecurrentClassifier, RecurrentConfig
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.distillation import word_level_student
from textcompress.techniques.pruning import apply_drop_layers, apply_prune_magnitude, apply_prune_structured, prunable_weights
from textcompress.techniques.recurrent import (
    direction_modules, low_rank_recurrent, mask_hidden_units, remove_hidden_units, svd_factors, tie_directions,
    unit_importance, units_to_keep,
)
from textcompress.techniques.sharing import apply_share_layers
from textcompress.training import predict_logits, train_classifier

from tests.conftest import TINY_VOCAB

SENTENCES = [np.array([2, 5, 9, 11, 3]), np.array([2, 7, 3]), np.array([2, 4, 4, 8, 13, 21, 30, 6, 3]), np.array([2, 17, 3])]
SHAPES = {  # cell, layers, bidirectional, pooling, head
    "bilstm-max": ("lstm", 1, True, "max", 0),
    "bilstm-2-last-head": ("lstm", 2, True, "last", 12),
    "lstm-mean": ("lstm", 1, False, "mean", 0),
    "bigru-2-mean": ("gru", 2, True, "mean", 0),
}


def build(name: str, hidden: int = 8, seed: int = 0) -> RecurrentClassifier:
    cell, layers, bidirectional, pooling, head = SHAPES[name]
    torch.manual_seed(seed)
    config = RecurrentConfig(len(TINY_VOCAB), 16, hidden, cell=cell, num_layers=layers, bidirectional=bidirectional,
                             pooling=pooling, head_size=head)
    model = RecurrentClassifier(config).eval()
    with torch.no_grad():  # non-zero biases, so a removed unit's biases matter
        for module in direction_modules(model).values():
            for name_, p in module.named_parameters():
                if "bias" in name_:
                    p.normal_(0, 0.3)
    return model


def logits(model, sentences=SENTENCES):
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in pad_arrays(sentences)))


@pytest.fixture(scope="module")
def rnn_ctx(tiny_prepared):
    """A BiLSTM teacher trained briefly on the tiny task, in a compress context."""
    torch.manual_seed(0)
    teacher = RecurrentClassifier(RecurrentConfig(len(TINY_VOCAB), 16, 16, cell="lstm", dropout=0.0))
    train = load_split(tiny_prepared, "train")
    train_classifier(teacher, train, epochs=3, lr=1e-2, batch_size=16, seed=0)
    return TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)


def recovery_args(name: str, **extra) -> dict:
    return {**TECHNIQUES[name].defaults, "epochs": 0, **extra}


# ---------------------------------------------------------------------------
# Hidden units


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_removed_hidden_units_give_the_masked_models_outputs(name):
    model = build(name)
    generator = torch.Generator().manual_seed(1)
    keep = {n: sorted(torch.randperm(8, generator=generator)[:5].tolist()) for n in direction_modules(model)}
    pruned = remove_hidden_units(model, keep)
    torch.testing.assert_close(logits(pruned), logits(mask_hidden_units(model, keep)), atol=1e-5, rtol=0)
    # ... and the masking really changed the model, so the comparison is not vacuous
    assert (logits(mask_hidden_units(model, keep)) - logits(model)).abs().max() > 1e-3


def test_a_masked_unit_outputs_zero_at_every_step():
    model = build("bilstm-max")
    keep = {n: [0, 1, 2, 3] for n in direction_modules(model)}
    x = model.word_embeddings(torch.from_numpy(pad_arrays(SENTENCES)[0]))
    lengths = torch.from_numpy(pad_arrays(SENTENCES)[1]).sum(1)
    with torch.no_grad():
        out = mask_hidden_units(model, keep).layers[0](x, lengths)
    assert out[..., 4:8].abs().max() == 0 and out[..., 12:16].abs().max() == 0 and out[..., :4].abs().max() > 0


@pytest.mark.parametrize("name", ["bilstm-2-last-head", "bigru-2-mean"])
def test_pruned_model_has_the_stated_shapes(name):
    model = build(name)
    pruned = remove_hidden_units(model, {n: [1, 3, 6] for n in direction_modules(model)})
    gates = 4 if model.config.cell == "lstm" else 3
    assert pruned.config.hidden_size == 3
    second = pruned.layers[1].forward_rnn
    assert tuple(second.weight_ih_l0.shape) == (gates * 3, 6)  # reads both directions' 3 units
    assert tuple(second.weight_hh_l0.shape) == (gates * 3, 3)
    # What reads the pooled features now reads 6 of them: the ReLU head where there is one, else the classifier.
    reader = pruned.head[0] if model.config.head_size else pruned.classifier
    assert reader.weight.shape[1] == 6 and (not model.config.head_size or tuple(reader.weight.shape) == (12, 6))
    assert count_parameters(pruned) < count_parameters(model)


def test_units_to_keep_keeps_the_same_count_everywhere_rounded_up():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0).flip(0)}
    keep = units_to_keep(scores, 0.7, round_to=4)
    assert keep == {"a": [6, 7, 8, 9], "b": [0, 1, 2, 3]}


def test_importance_ranks_a_planted_useless_unit_last(rnn_ctx):
    model = RecurrentClassifier(rnn_ctx.teacher.config)
    model.load_state_dict(rnn_ctx.teacher.state_dict())
    h = model.config.hidden_size
    with torch.no_grad():
        model.classifier.weight[:, 5] = 0.0  # forward unit 5 reaches nothing
    scores = unit_importance(model, rnn_ctx.train, rnn_ctx.teacher_logits, batches=4)
    assert scores["layers.0.forward_rnn"][5] == 0 and scores["layers.0.forward_rnn"].argmin() == 5
    assert 5 not in units_to_keep(scores, 1 / h)["layers.0.forward_rnn"]


def test_prune_structured_on_an_lstm_removes_units_and_exports(rnn_ctx, tmp_path):
    args = recovery_args("prune_structured", units=0.5, round_to=1, importance_batches=4)
    pruned, details = apply_prune_structured(rnn_ctx.teacher, args, rnn_ctx)
    assert details["hidden_size_before"] == 16 and details["hidden_size"] == pruned.config.hidden_size == 8
    assert all(len(units) == 8 for units in details["units_kept"].values())
    export_onnx(pruned, tmp_path / "model.onnx")
    assert parity_max_abs_diff(pruned, tmp_path / "model.onnx", rnn_ctx.validation) < 1e-4


# ---------------------------------------------------------------------------
# Low rank


def test_svd_factors_at_full_rank_reproduce_the_matrix():
    w = torch.randn(32, 8)
    up, down = svd_factors(w, 8)
    torch.testing.assert_close(up @ down, w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_direction_factorised_at_full_rank_computes_what_the_dense_one_does(cell):
    torch.manual_seed(0)
    dense = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(6, 5, batch_first=True)
    factored = FactorizedRNN(cell, 6, 5, input_rank=6, hidden_rank=5)
    with torch.no_grad():
        factored.weight_ih.copy_(svd_factors(dense.weight_ih_l0, 6)[0])
        factored.input_down.weight.copy_(svd_factors(dense.weight_ih_l0, 6)[1])
        factored.hidden_up.copy_(svd_factors(dense.weight_hh_l0, 5)[0])
        factored.hidden_down.copy_(svd_factors(dense.weight_hh_l0, 5)[1])
        factored.bias_ih.copy_(dense.bias_ih_l0)
        factored.bias_hh.copy_(dense.bias_hh_l0)
        x = torch.randn(3, 7, 6)
        torch.testing.assert_close(factored(x)[0], dense(x)[0], atol=1e-5, rtol=0)


def test_low_rank_cuts_parameters_as_computed_and_keeps_small_matrices_dense():
    model = build("bilstm-max", hidden=8)  # W_ih 32×16, W_hh 32×8 per direction
    factored, decided = low_rank_recurrent(model, "recurrent", lambda s: 3)
    assert decided["layers.0.forward_rnn.input"] == 3 and decided["layers.0.backward_rnn.hidden"] == 3
    saved_per_direction = (32 * 16 - 3 * (32 + 16)) + (32 * 8 - 3 * (32 + 8))
    assert count_parameters(model) - count_parameters(factored) == 2 * saved_per_direction
    _, kept = low_rank_recurrent(model, "hidden", lambda s: len(s))
    assert kept == {f"layers.0.{d}_rnn.hidden": "dense (rank 8 would not be smaller)" for d in ("forward", "backward")}


def test_a_low_rank_lstm_exports_storing_the_factors_and_matches_pytorch(tmp_path):
    model = build("bilstm-2-last-head", hidden=16)
    factored, _ = low_rank_recurrent(model, "recurrent", lambda s: 2)
    split = type("S", (), {"input_ids": SENTENCES * 8})()
    export_onnx(factored, tmp_path / "model.onnx")
    assert parity_max_abs_diff(factored, tmp_path / "model.onnx", split) < 1e-4
    shapes = [tuple(t.dims) for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer]
    assert (64, 2) in shapes and (2, 16) in shapes and (1, 64, 16) not in shapes  # W_hh stored as its factors


# ---------------------------------------------------------------------------
# Sharing, layers, magnitude


def test_tied_directions_are_one_module_and_one_onnx_initializer(tmp_path, tiny_tokenizer_file):
    model = build("bilstm-max", hidden=8)  # W_ih 32×16, W_hh 32×8 per direction
    tied = tie_directions(model, "average")
    layer = tied.layers[0]
    assert layer.forward_rnn is layer.backward_rnn
    recurrent = sum(p.numel() for p in direction_modules(model)["layers.0.forward_rnn"].parameters())
    assert count_parameters(model) - count_parameters(tied) == recurrent
    save_bundle(tied, tmp_path / "bundle", tiny_tokenizer_file, ["negative", "positive"])
    loaded, _ = load_bundle(tmp_path / "bundle")
    assert loaded.layers[0].forward_rnn is loaded.layers[0].backward_rnn
    torch.testing.assert_close(logits(loaded), logits(tied))
    export_onnx(tied, tmp_path / "tied.onnx")
    export_onnx(model, tmp_path / "untied.onnx")
    def recurrent_matrices(path):
        return [t for t in onnx.load(str(path)).graph.initializer if tuple(t.dims) == (1, 32, 8)]

    assert len(recurrent_matrices(tmp_path / "tied.onnx")) == 1  # the W_hh both directions read, stored once
    assert len(recurrent_matrices(tmp_path / "untied.onnx")) == 2
    assert (tmp_path / "tied.onnx").stat().st_size < (tmp_path / "untied.onnx").stat().st_size - recurrent * 4 * 0.9
    split = type("S", (), {"input_ids": SENTENCES * 8})()
    assert parity_max_abs_diff(tied, tmp_path / "tied.onnx", split) < 1e-4


def test_share_layers_ties_an_lstms_directions(rnn_ctx):
    tied, details = apply_share_layers(rnn_ctx.teacher, recovery_args("share_layers", share="directions", init="first"), rnn_ctx)
    assert details["share"] == "directions" and details["params_after"] < details["params_before"]
    # init first: the tied model's forward direction is the teacher's
    torch.testing.assert_close(tied.layers[0].forward_rnn.weight_hh_l0, rnn_ctx.teacher.layers[0].forward_rnn.weight_hh_l0)


def test_drop_layers_keeps_the_first_recurrent_layers(rnn_ctx):
    model = build("bigru-2-mean")
    kept, details = apply_drop_layers(model, recovery_args("drop_layers", keep=1), rnn_ctx)
    assert details["layers_kept"] == [0] and kept.config.num_layers == 1 and len(kept.layers) == 1
    torch.testing.assert_close(kept.layers[0].forward_rnn.weight_ih_l0, model.layers[0].forward_rnn.weight_ih_l0)


def test_magnitude_pruning_reaches_its_sparsity_on_the_recurrent_matrices(rnn_ctx):
    args = recovery_args("prune_magnitude", sparsity=0.75, schedule="oneshot")
    pruned, details = apply_prune_magnitude(rnn_ctx.teacher, args, rnn_ctx)
    weights = prunable_weights(pruned)
    assert sorted(weights) == [f"layers.0.{d}_rnn.weight_{m}_l0" for d in ("backward", "forward") for m in ("hh", "ih")]
    zeros = sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
    assert details["sparsity"] == pytest.approx(0.75, abs=0.01) and zeros == pytest.approx(0.75, abs=0.01)
    with torch.no_grad():  # the LSTM computes with the zeroed matrices, not a stale copy
        ids, mask = pad_batch(rnn_ctx.validation.input_ids[:8])
        assert not torch.allclose(pruned(ids, mask), rnn_ctx.teacher(ids, mask))


def test_a_smaller_lstm_student_starts_from_the_recurrent_teachers_word_pieces(rnn_ctx):
    args = {**TECHNIQUES["distill"].defaults, "student": "lstm", "layers": 1, "hidden_size": 8, "embedding_size": 16}
    student = word_level_student(rnn_ctx.teacher, args)
    torch.testing.assert_close(student.word_embeddings.weight, rnn_ctx.teacher.word_embeddings.weight)
    narrow = word_level_student(rnn_ctx.teacher, {**args, "embedding_size": 4})
    assert narrow.word_embeddings.weight.shape == (len(TINY_VOCAB), 4)
