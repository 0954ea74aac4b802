"""Tests for textcompress.models.encoder: the classifier's forward pass, bundles on disk,
and parameter counting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from textcompress.data import pad_batch
from textcompress.errors import TextcompressError
from textcompress.models.encoder import (
    TextClassifier,
    count_parameters,
    load_bundle,
    save_bundle,
)

from tests.conftest import CLS_ID, SEP_ID, TINY_VOCAB, tiny_model_config

BUNDLE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "labels.json")


def ids_of(sentence: str) -> np.ndarray:
    return np.array([CLS_ID] + [TINY_VOCAB[w] for w in sentence.split()] + [SEP_ID], dtype=np.int64)


def random_model(seed: int = 0, **config_overrides) -> TextClassifier:
    torch.manual_seed(seed)
    config = replace(tiny_model_config(layers=2), **config_overrides)
    return TextClassifier(config).eval()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_sentences_logits(pooling):
    model = random_model(pooling=pooling)
    short = ids_of("the movie was great .")
    longer = ids_of("the plot was really very very so too boring and dull .")
    alone_ids, alone_mask = pad_batch([short])
    batch_ids, batch_mask = pad_batch([longer, short, ids_of("a film")])
    assert batch_ids.shape[1] > len(short)  # the short sentence really is padded in the batch
    with torch.no_grad():
        alone = model(alone_ids, alone_mask)[0]
        in_batch = model(batch_ids, batch_mask)[1]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)


def test_save_bundle_load_bundle_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer_file):
    model = random_model(seed=3)
    labels = ["negative", "positive"]
    save_bundle(model, tmp_path / "bundle", tiny_tokenizer_file, labels)
    loaded, loaded_labels = load_bundle(tmp_path / "bundle")

    assert loaded_labels == labels
    assert loaded.config == model.config
    assert not loaded.training  # ready for inference
    ids, mask = pad_batch([ids_of("the movie was great ."), ids_of("i hate the plot")])
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_save_bundle_keeps_uneven_per_layer_shapes(tmp_path, tiny_tokenizer_file):
    model = random_model(layer_heads=[4, 2], layer_ffn=[64, 16])
    save_bundle(model, tmp_path / "bundle", tiny_tokenizer_file, [0, 1])
    loaded, _ = load_bundle(tmp_path / "bundle")
    assert loaded.config.layer_heads == [4, 2]
    assert loaded.encoder.layer[1].intermediate.dense.out_features == 16
    ids, mask = pad_batch([ids_of("a good film")])
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


@pytest.mark.parametrize("missing", BUNDLE_FILES)
def test_load_bundle_names_the_missing_file(tmp_path, tiny_tokenizer_file, missing):
    save_bundle(random_model(), tmp_path / "bundle", tiny_tokenizer_file, [0, 1])
    (tmp_path / "bundle" / missing).unlink()
    with pytest.raises(TextcompressError, match=missing.replace(".", r"\.")):
        load_bundle(tmp_path / "bundle")


def test_count_parameters_counts_a_tied_parameter_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)  # 12 weights + 3 biases
            self.b = nn.Linear(4, 3)
            self.b.weight = self.a.weight  # shared: its 12 weights count once

    # a: 12 + 3, b: its own 3 biases, shared weight not again: 12 + 3 + 3 = 18
    assert count_parameters(Tied()) == 18
    assert count_parameters(nn.Linear(4, 3)) == 15


def test_count_parameters_of_a_classifier_with_a_shared_layer_weight():
    model = random_model()
    untied = sum(p.numel() for p in model.parameters())
    shared = model.encoder.layer[0].intermediate.dense.weight
    model.encoder.layer[1].intermediate.dense.weight = shared
    assert count_parameters(model) == untied - shared.numel()
