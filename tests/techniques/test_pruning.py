"""Tests for textcompress.techniques.pruning: structure really removed, same outputs as masked,
exported at the new size; layer dropping; unstructured sparsity reached and reported."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_batch
from textcompress.export import export_onnx, parity_max_abs_diff
from textcompress.modeling import TextClassifier, count_parameters, load_bundle, save_bundle
from textcompress.stages.compress import CompressContext
from textcompress.techniques import TECHNIQUES
from textcompress.techniques.pruning import (
    apply_drop_layers, apply_prune_magnitude, apply_prune_structured, choose_kept, cubic_sparsity, gate_importance,
    layers_to_keep, magnitude_masks, prunable_weights, remove_heads_and_neurons,
)
from textcompress.training import predict_logits

from tests.conftest import tiny_model_config


def random_model(layers: int = 2, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(replace(tiny_model_config(layers=layers))).eval()


@pytest.fixture(scope="module")
def batch(tiny_prepared):
    return pad_batch(load_split(tiny_prepared, "validation").input_ids[:16])


@pytest.fixture(scope="module")
def ctx(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    return CompressContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)


def masked_logits(model, keep_heads, keep_neurons, ids, mask):
    """The unpruned model with the removed heads' and neurons' outputs multiplied by zero."""
    for layer, heads, neurons in zip(model.encoder.layer, keep_heads, keep_neurons):
        gate = torch.zeros(layer.attention.self.num_heads)
        gate[heads] = 1.0
        layer.attention.self.head_gate = gate
        ngate = torch.zeros(layer.intermediate.dense.out_features)
        ngate[neurons] = 1.0
        layer.intermediate.neuron_gate = ngate
    try:
        with torch.no_grad():
            return model(ids, mask)
    finally:
        for layer in model.encoder.layer:
            layer.attention.self.head_gate = layer.intermediate.neuron_gate = None


def test_removing_heads_and_neurons_gives_fewer_heads_and_the_masked_models_outputs(batch):
    model = random_model()
    keep_heads, keep_neurons = [[0, 2], [3]], [list(range(0, 64, 2)), [5, 7, 11]]
    pruned = remove_heads_and_neurons(model, keep_heads, keep_neurons).eval()
    ids, mask = batch

    assert pruned.config.layer_heads == [2, 1] and pruned.config.layer_ffn == [32, 3]
    assert pruned.encoder.layer[1].attention.self.query.out_features == 1 * model.config.head_dim
    assert pruned.encoder.layer[0].output.dense.in_features == 32
    assert count_parameters(pruned) < count_parameters(model)
    with torch.no_grad():
        got = pruned(ids, mask)
    torch.testing.assert_close(got, masked_logits(model, keep_heads, keep_neurons, ids, mask), rtol=0, atol=1e-5)
    # and it differs from the unpruned model, so the comparison above can fail
    with torch.no_grad():
        assert (got - model(ids, mask)).abs().max() > 1e-4


def test_pruned_model_saves_reloads_and_exports_at_its_new_size(batch, tiny_prepared, tmp_path):
    model = random_model()
    pruned = remove_heads_and_neurons(model, [[1], [0, 1, 2]], [[0, 1, 2, 3], list(range(40))])
    save_bundle(pruned, tmp_path / "bundle", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "bundle")
    ids, mask = batch
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), pruned.eval()(ids, mask))
    export_onnx(reloaded, tmp_path / "pruned.onnx")
    export_onnx(model, tmp_path / "full.onnx")
    assert (tmp_path / "pruned.onnx").stat().st_size < 0.8 * (tmp_path / "full.onnx").stat().st_size
    assert parity_max_abs_diff(reloaded, tmp_path / "pruned.onnx", load_split(tiny_prepared, "validation")) < 1e-4


def test_choose_kept_global_removes_the_lowest_scores_and_keeps_one_per_layer():
    scores = [torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([0.01, 0.02, 0.03, 0.04])]
    kept = choose_kept(scores, remove=0.5, scope="global")
    # The four lowest are all in layer 2, but a layer keeps at least its best unit.
    assert kept == [[0, 1, 2, 3], [3]]
    assert choose_kept(scores, remove=0.5, scope="layer") == [[2, 3], [2, 3]]
    assert choose_kept([torch.arange(40.0)], remove=0.9, scope="layer", round_to=16) == [list(range(24, 40))]
    with pytest.raises(ValueError, match="fraction"):
        choose_kept(scores, remove=1.0, scope="global")


def test_gate_importance_scores_a_silenced_head_and_neuron_as_unimportant(ctx):
    model = copy.deepcopy(ctx.teacher)
    d = model.config.head_dim
    with torch.no_grad():  # head 1 of layer 0 and neuron 3 of layer 1 no longer reach the output
        model.encoder.layer[0].attention.output.dense.weight[:, d:2 * d] = 0
        model.encoder.layer[1].output.dense.weight[:, 3] = 0
    heads, neurons = gate_importance(model, ctx.train, ctx.teacher_logits, batches=4, batch_size=16)
    assert [len(h) for h in heads] == model.config.layer_heads
    assert [len(n) for n in neurons] == model.config.layer_ffn
    assert heads[0][1] < 1e-6 < heads[0].max()
    assert neurons[1][3] < 1e-6 < neurons[1].max()
    assert all(l.attention.self.head_gate is None for l in model.encoder.layer)  # gates removed afterwards


def test_apply_prune_structured_shrinks_recovers_and_records_what_it_removed(ctx):
    args = {**TECHNIQUES["prune_structured"].defaults, "heads": 0.5, "ffn": 0.5, "round_to": 1,
            "importance_batches": 4, "epochs": 1, "lr": 1e-3, "batch_size": 32}
    pruned, details = apply_prune_structured(ctx.teacher, args, ctx)
    assert sum(pruned.config.layer_heads) == 4 and sum(pruned.config.layer_ffn) == 64
    assert details["layer_heads"] == pruned.config.layer_heads
    assert details["params_after"] == count_parameters(pruned) < details["params_before"]
    assert len(details["history"]) == 1 and np.isfinite(details["history"][0]["loss"])
    assert ctx.teacher.config.layer_heads == [4, 4]  # the teacher itself is untouched


@pytest.mark.parametrize("strategy, expected", [("top", [0, 1]), ("bottom", [2, 3]), ("alternate", [0, 3])])
def test_layers_to_keep_strategies(strategy, expected):
    assert layers_to_keep(random_model(layers=4), 2, strategy) == expected


def test_drop_layers_by_importance_keeps_the_layer_that_matters(ctx):
    model = copy.deepcopy(ctx.teacher)
    kept = layers_to_keep(model, 1, "importance", ctx, batches=4)
    assert len(kept) == 1
    args = {**TECHNIQUES["drop_layers"].defaults, "keep": 1, "strategy": "top", "epochs": 0}
    student, details = apply_drop_layers(model, args, ctx)
    assert student.config.num_layers == 1 and details["layers_kept"] == [0] and details["history"] == []


def test_cubic_schedule_rises_monotonically_to_the_target_and_holds():
    values = [cubic_sparsity(s, 100, 0.8) for s in range(0, 101)]
    assert values[0] == 0.0 and values[70] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[35] > 0.8 * 0.5  # cubic: most of the pruning happens early


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_hit_the_sparsity_and_drop_the_smallest(scope):
    weights = prunable_weights(random_model())
    masks = magnitude_masks(weights, 0.75, scope)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept / total == pytest.approx(0.25, abs=0.01)
    for name, mask in masks.items():
        if scope == "layer":
            assert mask.float().mean().item() == pytest.approx(0.25, abs=0.02)
        w = weights[name].detach().abs()
        if mask.any() and (~mask).any():
            assert w[~mask].max() <= w[mask].min()


def test_apply_prune_magnitude_reaches_the_target_and_says_it_is_not_faster(ctx):
    args = {**TECHNIQUES["prune_magnitude"].defaults, "sparsity": 0.8, "frequency": 2, "epochs": 1, "lr": 1e-3}
    pruned, details = apply_prune_magnitude(ctx.teacher, args, ctx)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(pruned).values())
    total = sum(w.numel() for w in prunable_weights(pruned).values())
    assert zeros / total == pytest.approx(0.8, abs=0.005)
    assert details["sparsity"] == pytest.approx(0.8, abs=0.005)
    assert set(details["per_layer_sparsity"]) == {0, 1}
    assert "not faster" in details["note"]
    assert (ctx.teacher.encoder.layer[0].intermediate.dense.weight != 0).all()  # teacher untouched


def test_keep_masks_drop_exactly_the_fraction_even_with_ties():
    from textcompress.techniques.pruning import keep_masks

    scores = {"a": torch.zeros(10, 10), "b": torch.zeros(5, 4)}  # all tied, as movement scores start
    masks = keep_masks(scores, 0.8, "global")
    assert sum(int(m.sum()) for m in masks.values()) == 120 - int(0.8 * 120)
    assert all(int(m.sum()) == m.numel() - int(0.8 * m.numel()) for m in keep_masks(scores, 0.8, "layer").values())


def test_straight_through_mask_passes_gradients_to_masked_weights():
    from textcompress.techniques.pruning import MovementMask

    weight = torch.ones(2, 3, requires_grad=True)
    mask = MovementMask((2, 3))
    mask.mask[0] = 0.0
    effective = mask(weight)
    assert torch.equal(effective[0], torch.zeros(3))
    (effective * torch.arange(6.0).view(2, 3)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(6.0).view(2, 3))  # masked row too


def test_movement_pruning_reaches_the_sparsity_and_leaves_plain_weights(ctx):
    from textcompress.techniques.pruning import apply_prune_movement

    args = {**TECHNIQUES["prune_movement"].defaults, "sparsity": 0.7, "frequency": 2, "epochs": 1, "lr": 1e-3}
    pruned, details = apply_prune_movement(ctx.teacher, args, ctx)
    weights = prunable_weights(pruned)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.numel() for w in weights.values()) == pytest.approx(0.7, abs=0.005)
    assert details["sparsity"] == pytest.approx(0.7, abs=0.005) and "not faster" in details["note"]
    assert not any("parametrizations" in name for name in pruned.state_dict())  # saves and exports as usual
    # Movement keeps weights that moved away from zero, not simply the largest ones.
    magnitude_kept = magnitude_masks(prunable_weights(ctx.teacher), 0.7, "global")
    moved_kept = {n: w != 0 for n, w in weights.items()}
    overlap = sum(int((magnitude_kept[n] & moved_kept[n]).sum()) for n in weights)
    assert overlap < sum(int(m.sum()) for m in moved_kept.values())
