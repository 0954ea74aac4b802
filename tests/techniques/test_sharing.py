"""Tests for textcompress.techniques.sharing: layers really share one set of weights, stored and
exported once, and the shared model starts from the teacher; relaxed sharing's per-layer
corrections give back what sharing took, exactly at full rank and best on the data when fitted."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from textcompress.data import load_split, pad_batch
from textcompress.deploy.export import export_onnx, parity_max_abs_diff
from textcompress.models.encoder import TextClassifier, count_parameters, load_bundle, save_bundle
from textcompress.deploy.quantization import calibration_batches
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.decomposition import input_grams
from textcompress.techniques.sharing import apply_share_layers, group_sources, relaxed_targets, share_layers
from textcompress.training import predict_logits

from tests.conftest import tiny_model_config


def random_model(layers: int = 4, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(tiny_model_config(layers=layers)).eval()


def test_group_sources_split_layers_into_contiguous_groups():
    assert group_sources(6, 1) == [0] * 6
    assert group_sources(6, 2) == [0, 0, 0, 3, 3, 3]
    assert group_sources(6, 6) == list(range(6))
    assert group_sources(5, 2) == [0, 0, 2, 2, 2]
    for layers in range(1, 9):  # every layer reads its group's first layer, never a later one
        for groups in range(1, layers + 1):
            sources = group_sources(layers, groups)
            assert len(set(sources)) == groups and all(s <= i and sources[s] == s for i, s in enumerate(sources))
    with pytest.raises(ValueError, match="groups"):
        group_sources(6, 0)


def test_shared_layers_are_one_tensor_and_counted_once():
    model = random_model()
    shared = share_layers(model, groups=2, share="all", init="first")
    layers = shared.encoder.layer
    assert layers[1].attention.self.query.weight is layers[0].attention.self.query.weight
    assert layers[3].output.dense.weight is layers[2].output.dense.weight
    assert layers[2].attention.self.query.weight is not layers[0].attention.self.query.weight
    per_layer = sum(p.numel() for p in model.encoder.layer[0].parameters())
    assert count_parameters(shared) == count_parameters(model) - 2 * per_layer
    # `first` keeps the leader's weights as they were
    assert torch.equal(layers[2].intermediate.dense.weight, model.encoder.layer[2].intermediate.dense.weight)


def test_average_init_and_partial_sharing():
    model = random_model()
    shared = share_layers(model, groups=1, share="attention", init="average")
    expected = torch.stack([l.attention.self.key.weight for l in model.encoder.layer]).mean(0)
    torch.testing.assert_close(shared.encoder.layer[3].attention.self.key.weight, expected)
    # The FFN stays per layer and keeps each layer's own weights.
    for i in range(4):
        assert torch.equal(shared.encoder.layer[i].intermediate.dense.weight, model.encoder.layer[i].intermediate.dense.weight)
    assert shared.encoder.layer[1].intermediate is not shared.encoder.layer[0].intermediate


def test_shared_bundle_and_onnx_store_each_weight_once(tiny_prepared, tmp_path):
    model = random_model(layers=6)
    shared = share_layers(model, groups=1)
    save_bundle(shared, tmp_path / "shared", tiny_prepared / "tokenizer.json", [0, 1])
    save_bundle(model, tmp_path / "full", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "shared")
    assert reloaded.encoder.layer[5].attention.self.value.weight is reloaded.encoder.layer[0].attention.self.value.weight
    ids, mask = pad_batch(load_split(tiny_prepared, "validation").input_ids[:8])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), shared(ids, mask))
    assert (tmp_path / "shared/model.safetensors").stat().st_size < 0.6 * (tmp_path / "full/model.safetensors").stat().st_size

    export_onnx(reloaded, tmp_path / "shared.onnx")
    export_onnx(model, tmp_path / "full.onnx")
    stored = sum(np.prod(t.dims) for t in onnx.load(str(tmp_path / "shared.onnx")).graph.initializer)
    assert stored <= count_parameters(shared) + 64  # each shared matrix appears once (plus tiny constants)
    assert (tmp_path / "shared.onnx").stat().st_size < 0.6 * (tmp_path / "full.onnx").stat().st_size
    assert parity_max_abs_diff(reloaded, tmp_path / "shared.onnx", load_split(tiny_prepared, "validation")) < 1e-4


def test_apply_share_layers_recovers_and_records_groups(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)
    before = copy.deepcopy(teacher.state_dict())
    args = {**TECHNIQUES["share_layers"].defaults, "groups": 1, "epochs": 1, "lr": 1e-3}
    shared, details = apply_share_layers(teacher, args, ctx)
    assert details["shared_layers"] == [0, 0] and details["params_after"] < details["params_before"]
    assert shared.encoder.layer[1].attention is shared.encoder.layer[0].attention
    assert len(details["history"]) == 1
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_sharing_refuses_layers_of_different_shapes():
    from textcompress.techniques.pruning import remove_heads_and_neurons

    pruned = remove_heads_and_neurons(random_model(layers=2), [[0], [0, 1]], [list(range(64)), list(range(64))])
    with pytest.raises(ValueError, match="different shapes"):
        share_layers(pruned, groups=1)


def test_relaxed_sharing_at_full_rank_computes_what_the_model_did():
    model = random_model()
    hidden = model.config.hidden_size
    relaxed = share_layers(model, groups=1, delta_rank=hidden)  # shared weight + full-rank correction
    ids, mask = pad_batch([np.arange(3, 12), np.arange(5, 10)])
    with torch.no_grad():
        torch.testing.assert_close(relaxed(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
    layers = relaxed.encoder.layer
    assert layers[3].intermediate.dense.weight is layers[0].intermediate.dense.weight
    # biases, corrections and LayerNorms stay each layer's own
    assert layers[3].intermediate.dense.bias is not layers[0].intermediate.dense.bias
    assert layers[3].output.LayerNorm is not layers[0].output.LayerNorm


def test_relaxed_sharing_counts_its_parameters():
    model = random_model()
    config, rank = model.config, 4
    relaxed = share_layers(model, groups=2, delta_rank=rank)
    h, f = config.hidden_size, config.intermediate_size
    matrices = 4 * h * h + 2 * h * f
    corrections = rank * (4 * (h + h) + (h + f) + (f + h))
    # Two of the four layers give up their weight matrices; every layer adds its corrections.
    assert count_parameters(relaxed) == count_parameters(model) - 2 * matrices + 4 * corrections
    with pytest.raises(ValueError, match="delta_rank"):
        share_layers(model, groups=2, delta_rank=h + 1)


def test_relaxed_corrections_fitted_to_inputs_keep_the_outputs_closer(tiny_prepared):
    model = random_model()
    train = load_split(tiny_prepared, "train")
    grams = input_grams(model, relaxed_targets(4, 1, "all"), calibration_batches(train, 64))
    plain = share_layers(model, groups=1, delta_rank=3)
    fitted = share_layers(model, groups=1, delta_rank=3, grams=grams)
    assert count_parameters(fitted) == count_parameters(plain)
    ids, mask = pad_batch(train.input_ids[:64])
    with torch.no_grad():
        reference = model(ids, mask)
        assert (fitted(ids, mask) - reference).abs().mean() < (plain(ids, mask) - reference).abs().mean()


def test_relaxed_bundle_and_onnx_store_the_shared_weight_once(tiny_prepared, tmp_path):
    model = random_model(layers=6)
    relaxed = share_layers(model, groups=1, delta_rank=2)
    save_bundle(relaxed, tmp_path / "relaxed", tiny_prepared / "tokenizer.json", [0, 1])
    reloaded, _ = load_bundle(tmp_path / "relaxed")
    assert reloaded.encoder.layer[5].attention.self.key.weight is reloaded.encoder.layer[0].attention.self.key.weight
    validation = load_split(tiny_prepared, "validation")
    ids, mask = pad_batch(validation.input_ids[:8])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), relaxed(ids, mask))
    export_onnx(reloaded, tmp_path / "relaxed.onnx")
    stored = sum(np.prod(t.dims) for t in onnx.load(str(tmp_path / "relaxed.onnx")).graph.initializer)
    assert stored <= count_parameters(relaxed) + 64
    assert parity_max_abs_diff(reloaded, tmp_path / "relaxed.onnx", validation) < 1e-4


def test_apply_share_layers_fits_relaxed_corrections_on_calibration_sentences(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0)
    args = {**TECHNIQUES["share_layers"].defaults, "groups": 1, "delta_rank": 4, "fit": "activations",
            "calibration": 16, "epochs": 0}
    relaxed, details = apply_share_layers(teacher, args, ctx)
    assert details["delta_rank"] == 4 and details["fit"] == "activations"
    assert relaxed.config.share_delta_rank == 4 and relaxed.encoder.layer[1].attention.self.query.delta_up.weight.shape[1] == 4
    assert details["params_after"] < details["params_before"]
