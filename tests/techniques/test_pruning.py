"""Tests for textcompress.techniques.pruning: structure really removed, same outputs as masked,
exported at the new size; layer dropping; unstructured sparsity reached and reported."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from textcompress.data import load_split, pad_batch
from textcompress.deploy.export import export_onnx, parity_max_abs_diff
from textcompress.models.encoder import TextClassifier, count_parameters, load_bundle, save_bundle
from textcompress.techniques import TECHNIQUES, TechniqueContext
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
    return TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)


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


def test_block_sums_and_expansion_cover_matrices_that_do_not_divide():
    from textcompress.techniques.pruning import block_sums, expand_blocks

    score = torch.arange(35, dtype=torch.float32).view(5, 7)
    sums = block_sums(score, (2, 3))
    assert sums.shape == (3, 3) and float(sums.sum()) == float(score.sum())
    assert float(sums[0, 0]) == float(score[:2, :3].sum()) and float(sums[2, 2]) == float(score[4:, 6:].sum())
    mask = expand_blocks(torch.tensor([[True, False, True], [False, True, False], [True, True, False]]), (2, 3), score.shape)
    assert mask.shape == score.shape and bool(mask[0, 0]) and not bool(mask[1, 3]) and not bool(mask[4, 6])


def test_emptied_heads_and_neurons_are_cut_out_with_the_same_outputs(batch):
    from textcompress.techniques.pruning import remove_emptied_structure

    model = random_model()
    d = model.config.head_dim
    with torch.no_grad():
        for layer in model.encoder.layer:  # biases non-zero, so folding constants matters
            for linear in (layer.intermediate.dense, layer.attention.self.value, layer.output.dense, layer.attention.output.dense):
                linear.bias.normal_(0, 0.5)
        first, second = model.encoder.layer
        first.output.dense.weight[:, [0, 5]] = 0           # neurons 0 and 5 silent
        first.intermediate.dense.weight[[7, 9]] = 0        # neurons 7 and 9 output a constant
        first.attention.output.dense.weight[:, :d] = 0     # head 0 silent
        second.attention.self.value.weight[d:2 * d] = 0    # head 1 attends over a constant
        second.attention.self.value.weight[3 * d:] = 0     # and head 3
    ids, mask = batch
    with torch.no_grad():
        expected = model(ids, mask)
    pruned, removed = remove_emptied_structure(copy.deepcopy(model))
    heads, ffn = model.config.num_heads, model.config.intermediate_size
    assert removed["layer_heads"] == [heads - 1, heads - 2] and removed["layer_ffn"] == [ffn - 4, ffn]
    assert count_parameters(pruned) < count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids, mask), expected, rtol=0, atol=1e-5)


def test_block_movement_pruning_masks_whole_blocks_and_removes_what_empties(ctx, tiny_prepared, tmp_path):
    from textcompress.techniques.pruning import apply_prune_movement

    args = {**TECHNIQUES["prune_movement"].defaults, "sparsity": 0.9, "block": [4, 8], "frequency": 2, "epochs": 1, "lr": 1e-3}
    pruned, details = apply_prune_movement(ctx.teacher, args, ctx)
    assert details["sparsity"] == pytest.approx(0.9, abs=0.03) and details["block"] == [4, 8]
    # Zeros come in whole blocks: every 4x8 block of a kept matrix is all zero or has no zero (trained weights never are).
    # Q/K/V lose whole heads (head_dim rows), so their block grid survives the removal.
    empty_blocks = 0
    for layer in pruned.encoder.layer:
        for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            w = linear.weight
            blocks = (w == 0).view(w.shape[0] // 4, 4, w.shape[1] // 8, 8).permute(0, 2, 1, 3).flatten(2)
            assert bool((blocks.all(-1) | ~blocks.any(-1)).all())
            empty_blocks += int(blocks.all(-1).sum())
    assert empty_blocks > 0
    assert sum(details["layer_ffn"]) < sum(details["layer_ffn_before"]) and details["params_after"] < details["params_before"]
    export_onnx(pruned, tmp_path / "pruned.onnx")
    assert parity_max_abs_diff(pruned, tmp_path / "pruned.onnx", load_split(tiny_prepared, "validation")) < 1e-4
