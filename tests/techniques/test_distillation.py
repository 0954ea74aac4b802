"""Tests for textcompress.techniques.distillation and the distillation loss in textcompress.training."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from textcompress.data import load_split, pad_batch
from textcompress.models.encoder import TextClassifier, count_parameters, load_bundle
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.distillation import apply_distill, pick_teacher_layers, student_from_teacher
from textcompress.training import kd_loss, predict_logits

from tests.conftest import tiny_model_config


def random_teacher(layers: int = 2, seed: int = 0, **overrides) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(replace(tiny_model_config(layers=layers), **overrides)).eval()


@pytest.fixture(scope="module")
def batch(tiny_prepared):
    split = load_split(tiny_prepared, "validation")
    return pad_batch(split.input_ids[:12])  # mixed lengths: padding is exercised


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask.to(torch.float32))[:, None, None, :] * -1e9


# ---------------------------------------------------------------------------
# student_from_teacher


@pytest.mark.parametrize("chosen", [[0], [1]])
def test_one_layer_student_reproduces_the_chosen_teacher_layer(batch, chosen):
    teacher = random_teacher(layers=2)
    student = student_from_teacher(teacher, chosen).eval()
    ids, mask = batch
    with torch.no_grad():
        teacher_hidden = teacher.hidden_states(ids, mask)
        # The student's only layer sees the embeddings, so it computes teacher layer `chosen`
        # applied to the teacher's embedding output (hidden state 0).
        expected = teacher.encoder.layer[chosen[0]](teacher_hidden[0], mask_bias(mask))
        student_hidden = student.hidden_states(ids, mask)

    assert student.config.num_layers == 1 and len(student.encoder.layer) == 1
    assert len(student_hidden) == 2
    assert torch.equal(student_hidden[0], teacher_hidden[0])
    assert torch.equal(student_hidden[1], expected)
    if chosen == [0]:
        assert torch.equal(student_hidden[1], teacher_hidden[1])


def test_student_of_all_layers_has_the_teachers_hidden_states_and_logits(batch):
    teacher = random_teacher(layers=2)
    student = student_from_teacher(teacher, [0, 1]).eval()
    ids, mask = batch
    with torch.no_grad():
        for got, want in zip(student.hidden_states(ids, mask), teacher.hidden_states(ids, mask), strict=True):
            assert torch.equal(got, want)
        assert torch.equal(student(ids, mask), teacher(ids, mask))


def test_student_runs_chosen_layers_in_the_given_order(batch):
    teacher = random_teacher(layers=3)
    student = student_from_teacher(teacher, [2, 0]).eval()
    ids, mask = batch
    with torch.no_grad():
        h0 = teacher.hidden_states(ids, mask)[0]
        expected = teacher.encoder.layer[0](teacher.encoder.layer[2](h0, mask_bias(mask)), mask_bias(mask))
        assert torch.equal(student.hidden_states(ids, mask)[-1], expected)


def test_student_keeps_the_per_layer_shapes_of_a_pruned_teacher(batch):
    teacher = random_teacher(layers=2, layer_heads=[4, 2], layer_ffn=[64, 16])
    student = student_from_teacher(teacher, [1]).eval()
    assert student.config.layer_heads == [2] and student.config.layer_ffn == [16]
    ids, mask = batch
    with torch.no_grad():
        expected = teacher.encoder.layer[1](teacher.hidden_states(ids, mask)[0], mask_bias(mask))
        assert torch.equal(student.hidden_states(ids, mask)[1], expected)


def test_student_does_not_share_tensors_with_the_teacher():
    teacher = random_teacher(layers=2)
    before = copy.deepcopy(teacher.state_dict())
    student = student_from_teacher(teacher, [1])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------------
# pick_teacher_layers


def test_pick_teacher_layers_by_count_keeps_the_bottom_layers():
    assert pick_teacher_layers(6, 2) == [0, 1]
    assert pick_teacher_layers(3, 3) == [0, 1, 2]


def test_pick_teacher_layers_by_index_list_keeps_the_order_given():
    assert pick_teacher_layers(6, [5, 0, 3]) == [5, 0, 3]


@pytest.mark.parametrize("layers", [0, 7, -1, [], [6], [-1], [0, 6]])
def test_pick_teacher_layers_rejects_out_of_range(layers):
    with pytest.raises(ValueError, match="distill: layers"):
        pick_teacher_layers(6, layers)


# ---------------------------------------------------------------------------
# kd_loss


def test_kd_loss_with_alpha_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    expected = nn.functional.cross_entropy(student, labels)
    torch.testing.assert_close(kd_loss(student, teacher, labels, temperature=2.0, alpha=0.0), expected)


def test_kd_loss_with_alpha_one_is_temperature_scaled_kl_teacher_to_student():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.zeros(5, dtype=torch.long)
    t = 3.0
    p = torch.softmax(teacher / t, -1)  # KL(teacher ‖ student), averaged over rows, times T²
    expected = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    torch.testing.assert_close(kd_loss(student, teacher, labels, temperature=t, alpha=1.0), expected)


def test_kd_loss_soft_part_is_zero_when_student_matches_teacher():
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 1, 0])
    assert kd_loss(logits, logits.clone(), labels, temperature=2.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_kd_loss_decreases_over_optimizer_steps_on_a_fixed_batch(tiny_prepared, alpha):
    train = load_split(tiny_prepared, "train")
    ids, mask = pad_batch(train.input_ids[:16])
    labels = torch.from_numpy(train.labels[:16].copy())
    teacher_logits = torch.randn(16, 2, generator=torch.Generator().manual_seed(3)) * 3
    student = random_teacher(layers=1, seed=4, dropout=0.0).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)

    losses = []
    for _ in range(5):
        loss = kd_loss(student(ids, mask), teacher_logits, labels, temperature=2.0, alpha=alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = kd_loss(student(ids, mask), teacher_logits, labels, temperature=2.0, alpha=alpha).item()
    assert final < losses[0], losses + [final]
    assert min(losses[1:] + [final]) < losses[0] - 0.01, losses + [final]


# ---------------------------------------------------------------------------
# apply_distill


def test_apply_distill_returns_a_smaller_trained_student_and_records_details(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher=teacher, train=train, validation=validation,
                          teacher_logits=predict_logits(teacher, train), seed=0)
    teacher_state = copy.deepcopy(teacher.state_dict())
    untrained = student_from_teacher(teacher, [0])
    args = {**TECHNIQUES["distill"].defaults, "layers": 1, "epochs": 2, "lr": 1e-3, "batch_size": 32}

    student, details = apply_distill(teacher, args, ctx)

    assert isinstance(student, TextClassifier)
    assert student.config.num_layers == 1 and len(student.encoder.layer) == 1
    assert count_parameters(student) < count_parameters(teacher)
    assert details["teacher_layers"] == [0] and details["layers"] == 1 and details["student"] == "bert"
    assert details["params_before"] == count_parameters(teacher)
    assert details["params_after"] == count_parameters(student)
    assert [h["epoch"] for h in details["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0.0 <= h["validation_accuracy"] <= 1.0 for h in details["history"])
    # It was trained (weights moved away from the cut-out copy), and the teacher was left alone.
    assert not torch.equal(student.encoder.layer[0].output.dense.weight, untrained.encoder.layer[0].output.dense.weight)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key


def test_apply_distill_same_is_a_recovery_copy_of_the_current_model(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    current = student_from_teacher(teacher, [1])
    current_state = copy.deepcopy(current.state_dict())
    args = {**TECHNIQUES["distill"].defaults, "student": "same", "epochs": 1, "batch_size": 64}

    model, details = apply_distill(current, args, ctx)

    assert model is not current and model.config.num_layers == 1
    assert details["params_before"] == details["params_after"] == count_parameters(current)
    assert len(details["history"]) == 1
    for key, value in current.state_dict().items():
        assert torch.equal(value, current_state[key]), key


def test_apply_distill_checks_layers_against_the_model_it_cuts(tiny_prepared):
    teacher = random_teacher(layers=2)
    shallower = student_from_teacher(teacher, [0])  # e.g. the result of an earlier distill step
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, np.zeros((len(train), 2), dtype=np.float32), seed=0)
    args = {**TECHNIQUES["distill"].defaults, "layers": 2, "epochs": 1}
    with pytest.raises(ValueError, match="distill: layers"):
        apply_distill(shallower, args, ctx)


# ---------------------------------------------------------------------------
# Hidden-state and attention-map distillation


def test_default_layer_map_spreads_student_layers_over_the_teacher():
    from textcompress.techniques.recovery import default_layer_map

    assert default_layer_map(2, 6) == [2, 5]
    assert default_layer_map(3, 6) == [1, 3, 5]
    assert default_layer_map(6, 6) == list(range(6))


def test_intermediate_losses_vanish_for_a_copy_of_the_teacher_and_grow_for_another_model(tiny_prepared, batch):
    from textcompress.techniques.recovery import DistillationLoss

    teacher = random_teacher(layers=2)
    ids, mask = batch
    labels = torch.zeros(ids.shape[0], dtype=torch.long)
    index = np.arange(ids.shape[0])
    logits = teacher(ids, mask).detach().numpy()
    copy_of_teacher = copy.deepcopy(teacher)
    plain = DistillationLoss(teacher, logits, 32, [0, 1], 2.0, 0.9, 0.0, 0.0)(copy_of_teacher, ids, mask, labels, index)
    full = DistillationLoss(teacher, logits, 32, [0, 1], 2.0, 0.9, 5.0, 5.0)(copy_of_teacher, ids, mask, labels, index)
    torch.testing.assert_close(full, plain)  # identical hidden states and attention maps add nothing
    other = random_teacher(layers=2, seed=3)
    with_terms = DistillationLoss(teacher, logits, 32, [0, 1], 2.0, 0.9, 5.0, 5.0)(other, ids, mask, labels, index)
    without = DistillationLoss(teacher, logits, 32, [0, 1], 2.0, 0.9, 0.0, 0.0)(other, ids, mask, labels, index)
    assert with_terms > without


def test_a_narrower_student_learns_hidden_states_through_a_trained_projection(batch):
    from textcompress.techniques.recovery import DistillationLoss

    teacher = random_teacher(layers=2)
    narrow = TextClassifier(replace(tiny_model_config(layers=1), hidden_size=16, num_heads=2, intermediate_size=32))
    ids, mask = batch
    loss_module = DistillationLoss(teacher, teacher(ids, mask).detach().numpy(), 16, [1], 2.0, 0.9, 1.0, 0.0)
    assert loss_module.projections[0].weight.shape == (32, 16)
    assert not any(p is q for p in loss_module.parameters() for q in teacher.parameters())  # the teacher never trains
    loss = loss_module(narrow, ids, mask, torch.zeros(ids.shape[0], dtype=torch.long), np.arange(ids.shape[0]))
    loss.backward()
    assert loss_module.projections[0].weight.grad.abs().sum() > 0


def test_apply_distill_with_hidden_and_attention_losses_records_them(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["distill"].defaults, "layers": 1, "epochs": 1, "lr": 1e-3, "hidden_weight": 1.0,
            "attention_weight": 1.0, "layer_map": [1]}
    student, details = apply_distill(teacher, args, ctx)
    assert details["losses"] == {"hidden_weight": 1.0, "attention_weight": 1.0, "layer_map": [1]}
    assert np.isfinite(details["history"][0]["loss"])
    assert next(teacher.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="layer_map"):
        apply_distill(teacher, {**args, "layer_map": [0, 1]}, ctx)


def test_forward_with_hidden_records_one_attention_map_per_use_of_a_shared_layer(batch):
    model = random_teacher(layers=3, shared_layers=[0, 0, 0]).eval()
    ids, mask = batch
    logits, hidden, maps = model.forward_with_hidden(ids, mask, attentions=True)
    assert len(hidden) == 4 and len(maps) == 3
    assert not torch.equal(maps[0], maps[1])  # the same weights see different inputs
    torch.testing.assert_close(logits, model(ids, mask))
    assert model.encoder.layer[0].attention.self.recorded is None


# ---------------------------------------------------------------------------
# Each loss term trains; the logit MSE of Tang et al.


@pytest.mark.parametrize("terms", [
    {"logit_loss": "mse"},
    {"hidden_weight": 1.0},
    {"attention_weight": 1.0},
])
def test_each_loss_term_decreases_on_a_fixed_batch(batch, terms):
    from textcompress.techniques.recovery import DistillationLoss

    teacher = random_teacher(layers=2)
    student = random_teacher(layers=1, seed=5, dropout=0.0).train()
    ids, mask = batch
    labels, index = torch.zeros(ids.shape[0], dtype=torch.long), np.arange(ids.shape[0])
    logits = (teacher(ids, mask) * 3).detach().numpy()
    args = {"hidden_weight": 0.0, "attention_weight": 0.0, "logit_loss": "kl", **terms}
    loss_module = DistillationLoss(teacher, logits, 32, [1], 2.0, 1.0, args["hidden_weight"], args["attention_weight"],
                                   args["logit_loss"])
    plain = DistillationLoss(teacher, logits, 32, [1], 2.0, 1.0, 0.0, 0.0, args["logit_loss"])

    def term():  # the term under test alone (the logit part is subtracted for the intermediate ones)
        with torch.no_grad():
            total = loss_module(student, ids, mask, labels, index)
            return float(total - plain(student, ids, mask, labels, index)) if args["logit_loss"] == "kl" else float(total)

    optimizer = torch.optim.Adam(list(student.parameters()) + list(loss_module.parameters()), lr=3e-3)
    before = term()
    for _ in range(8):
        optimizer.zero_grad()
        loss_module(student, ids, mask, labels, index).backward()
        optimizer.step()
    assert before > 0 and term() < 0.8 * before, (before, term())


def test_logit_mse_is_zero_for_the_teachers_own_logits(batch):
    from textcompress.techniques.recovery import DistillationLoss

    teacher = random_teacher(layers=1)
    ids, mask = batch
    logits = teacher(ids, mask).detach()
    loss = DistillationLoss(teacher, logits.numpy(), 32, [], 2.0, 1.0, 0.0, 0.0, "mse")(
        copy.deepcopy(teacher), ids, mask, torch.zeros(ids.shape[0], dtype=torch.long), np.arange(ids.shape[0]))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------
# Narrower BERT students


@pytest.mark.parametrize("basis", ["identity", "permutation"])
def test_projecting_onto_a_permutation_of_the_coordinates_changes_nothing(batch, basis):
    """A permutation is exact for LayerNorm too, and tells reads (x·B) from writes (Bᵀ·x)."""
    from textcompress.techniques.distillation import project_width

    teacher = random_teacher(layers=2)
    b = torch.eye(32) if basis == "identity" else torch.eye(32)[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    same = project_width(teacher, b).eval()
    ids, mask = batch
    with torch.no_grad():
        torch.testing.assert_close(same(ids, mask), teacher(ids, mask))
        torch.testing.assert_close(same.hidden_states(ids, mask)[-1], teacher.hidden_states(ids, mask)[-1] @ b)


def test_a_projected_student_carries_the_teachers_states_in_the_basis(batch, tiny_prepared):
    """Narrowed to 3/4 of the width along the top principal directions, the student's embedding
    output is close to the teacher's projected one, far closer than a random basis gives."""
    from textcompress.techniques.distillation import hidden_basis, project_width

    teacher = random_teacher(layers=2)
    split = load_split(tiny_prepared, "train")
    basis, energy = hidden_basis(teacher, split, 24, batches=4)
    assert basis.shape == (32, 24) and 24 / 32 < energy < 1.0  # the top directions hold more than their share
    torch.testing.assert_close(basis.T @ basis, torch.eye(24), atol=1e-5, rtol=0)
    random_basis, _ = torch.linalg.qr(torch.randn(32, 24, generator=torch.Generator().manual_seed(0)))
    ids, mask = batch
    real = mask.bool()

    def error(b):
        narrow = project_width(teacher, b, energy).eval()
        with torch.no_grad():
            got = narrow.hidden_states(ids, mask)[-1][real]
            want = teacher.hidden_states(ids, mask)[-1][real] @ b
        return float((got - want).norm() / want.norm())

    assert narrow_config_ok(project_width(teacher, basis))
    assert error(basis) < error(random_basis)


def narrow_config_ok(model) -> bool:
    c = model.config
    return c.hidden_size == 24 and c.head_dim == 8 and model.embeddings.word_embeddings.weight.shape[1] == 24


def test_apply_distill_narrows_heads_neurons_and_width_and_trains_with_the_basis(tiny_prepared, tiny_teacher, tmp_path):
    from textcompress.deploy.export import export_onnx
    from textcompress.deploy.inference import make_session, run_logits

    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["distill"].defaults, "layers": 2, "width": 16, "ffn": 24, "epochs": 1, "lr": 1e-3,
            "hidden_weight": 1.0}
    student, details = apply_distill(teacher, args, ctx)
    assert student.config.hidden_size == 16 and student.config.layer_heads == [2, 2]  # head size 8 kept
    assert student.config.layer_ffn == [24, 24]
    assert {k: v for k, v in details["narrowed"].items() if k != "energy_kept"} == {
        "width": 16, "layer_heads": [2, 2], "layer_ffn": [24, 24]}
    assert 0.5 < details["narrowed"]["energy_kept"] < 1.0
    assert details["losses"]["layer_map"] == [0, 1]
    export_onnx(student, tmp_path / "model.onnx")
    ids, mask = pad_batch(validation.input_ids[:8])
    with torch.no_grad():
        expected = student(ids, mask).numpy()
    assert np.abs(run_logits(make_session(tmp_path / "model.onnx"), ids.numpy(), mask.numpy()) - expected).max() < 1e-4
    with pytest.raises(ValueError, match="width=20 must be a multiple of the head size 8"):
        apply_distill(teacher, {**args, "width": 20}, ctx)
    with pytest.raises(ValueError, match="compares maps head by head"):  # 2 heads cannot match the teacher's 4
        apply_distill(teacher, {**args, "attention_weight": 1.0}, ctx)


# ---------------------------------------------------------------------------
# Word-level students (BiLSTM, GRU, CNN)


@pytest.mark.parametrize("kind,extra", [("lstm", {"layers": 1}), ("gru", {"layers": 1, "pooling": "last"}),
                                        ("cnn", {"filters": 16})])
def test_word_level_students_learn_from_the_teacher_and_start_from_its_embedding(tiny_prepared, tiny_teacher, kind, extra):
    from textcompress.techniques.distillation import embedding_table

    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["distill"].defaults, "student": kind, "embedding_size": 16, "hidden_size": 16, "epochs": 6,
            "lr": 5e-3, "batch_size": 16, "logit_loss": "mse", "alpha": 0.5, **extra}
    untrained_args = {**args, "epochs": 0}
    untrained, _ = apply_distill(teacher, untrained_args, ctx)
    torch.testing.assert_close(untrained.word_embeddings.weight, embedding_table(teacher, 16))

    student, details = apply_distill(teacher, args, ctx)
    assert details["student"] == kind and details["config"]["embedding_size"] == 16
    assert details["params_after"] < details["params_before"]
    teacher_agreement = (predict_logits(student, validation).argmax(-1) == predict_logits(teacher, validation).argmax(-1)).mean()
    assert teacher_agreement >= 0.85, details["history"]


def test_embedding_table_projects_onto_principal_directions():
    from textcompress.techniques.distillation import embedding_table

    teacher = random_teacher(layers=1)
    full = embedding_table(teacher, 32)
    torch.testing.assert_close(full, teacher.embeddings.word_embeddings.weight)
    small = embedding_table(teacher, 8)
    assert small.shape == (teacher.config.vocab_size, 8)
    # The principal directions keep more of the rows' spread than any other 8 directions, e.g. random ones.
    centred = full - full.mean(dim=0)
    random_basis, _ = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
    assert (small - small.mean(dim=0)).norm() > (centred @ random_basis).norm()
    with pytest.raises(ValueError, match="embedding_size=64 is wider"):
        embedding_table(teacher, 64)


def test_intermediate_losses_are_refused_for_a_recurrent_student(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["distill"].defaults, "student": "lstm", "layers": 1, "hidden_weight": 1.0, "epochs": 1}
    with pytest.raises(ValueError, match="need a transformer student, not recurrent; set them to 0"):
        apply_distill(teacher, args, ctx)


# ---------------------------------------------------------------------------
# The teacher's hidden states are cached once and reused


def test_a_second_candidate_reads_cached_states_and_never_runs_the_teacher(tiny_prepared, tiny_teacher, tmp_path):
    from textcompress.techniques.recovery import CachedTeacherStates

    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, predict_logits(teacher, train), seed=0, cache_dir=tmp_path)
    calls = []
    original = teacher.forward_with_hidden
    teacher.forward_with_hidden = lambda *a, **k: calls.append(1) or original(*a, **k)
    args = {**TECHNIQUES["distill"].defaults, "layers": 1, "epochs": 1, "lr": 1e-3, "hidden_weight": 1.0, "layer_map": [1]}

    apply_distill(teacher, args, ctx)
    first = len(calls)
    assert first == -(-len(train) // 128)  # one pass over the training set, batches of 128
    cached = list(tmp_path.glob("*/layer1.npy"))
    assert len(cached) == 1 and np.load(cached[0]).dtype == np.float16

    apply_distill(teacher, {**args, "lr": 2e-3}, ctx)  # another candidate mapping the same layer
    assert len(calls) == first

    apply_distill(teacher, {**args, "layer_map": [0]}, ctx)  # a new layer: one more pass, for it alone
    assert len(calls) == 2 * first and len(list(tmp_path.glob("*/layer*.npy"))) == 2

    # The cached states are the teacher's, within fp16 rounding.
    states = CachedTeacherStates(teacher, train, [1], tmp_path)
    index = np.array([3, 0, 7])
    ids, mask = pad_batch([train.input_ids[i] for i in index])
    with torch.no_grad():
        want = original(ids, mask)[1][2]
    got = states.batch(index, ids.shape[1], "cpu")[1]
    torch.testing.assert_close(got * mask[..., None], want * mask[..., None], atol=2e-2, rtol=1e-2)
    assert states.passes == 0


def test_states_are_computed_live_when_caching_is_off_or_attention_maps_are_needed(tiny_prepared, tiny_teacher, tmp_path):
    from textcompress.techniques.recovery import teacher_states

    teacher, _ = load_bundle(tiny_teacher)
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    ctx = TechniqueContext(teacher, train, validation, np.zeros((len(train), 2), dtype=np.float32), seed=0, cache_dir=tmp_path)
    assert teacher_states(ctx, [1], {"teacher_states": "live", "hidden_weight": 1.0}) is None
    assert teacher_states(ctx, [1], {"teacher_states": "auto", "hidden_weight": 1.0, "attention_weight": 1.0}) is None
    assert teacher_states(ctx, [1], {"teacher_states": "auto", "hidden_weight": 1.0}) is not None


def test_the_cache_key_changes_with_the_teachers_config_weights_and_data(tiny_prepared):
    from textcompress.techniques.recovery import fingerprint

    train = load_split(tiny_prepared, "train")
    teacher = random_teacher(layers=2)
    key = fingerprint(teacher, train)
    assert fingerprint(copy.deepcopy(teacher), train) == key  # same weights, config and rows
    other_pooling = copy.deepcopy(teacher)
    other_pooling.config = replace(teacher.config, pooling="cls")
    assert fingerprint(other_pooling, train) != key
    nudged = copy.deepcopy(teacher)
    with torch.no_grad():
        nudged.classifier.bias.add_(1e-3)
    assert fingerprint(nudged, train) != key
    fewer = type(train)(train.texts[:-1], train.input_ids[:-1], train.labels[:-1])
    assert fingerprint(teacher, fewer) != key
