"""Tests for textcompress.models.encoder: the classifier's forward pass, bundles on disk,
parameter counting and loading Hugging Face BERT checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from textcompress.data import pad_batch
from textcompress.errors import TextcompressError
from textcompress.models.encoder import (
    TextClassifier,
    count_parameters,
    from_pretrained_bert,
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


# ---------------------------------------------------------------------------
# Hugging Face BERT checkpoints

HF_CONFIG = {
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(TINY_VOCAB), "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
}


def hf_encoder_weights(config: dict) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face BertModel key names (no prefix)."""
    g = torch.Generator().manual_seed(7)
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    weights = {
        "embeddings.word_embeddings.weight": rand(v, h),
        "embeddings.position_embeddings.weight": rand(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": rand(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": rand(h),
        "embeddings.LayerNorm.bias": rand(h),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            weights[f"{p}attention.self.{name}.weight"] = rand(h, h)
            weights[f"{p}attention.self.{name}.bias"] = rand(h)
        weights.update({
            f"{p}attention.output.dense.weight": rand(h, h), f"{p}attention.output.dense.bias": rand(h),
            f"{p}attention.output.LayerNorm.weight": rand(h), f"{p}attention.output.LayerNorm.bias": rand(h),
            f"{p}intermediate.dense.weight": rand(f, h), f"{p}intermediate.dense.bias": rand(f),
            f"{p}output.dense.weight": rand(h, f), f"{p}output.dense.bias": rand(h),
            f"{p}output.LayerNorm.weight": rand(h), f"{p}output.LayerNorm.bias": rand(h),
        })
    return weights


def write_hf_checkpoint(directory, weights: dict, prefix: str = "bert.", extra: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    tensors = {prefix + k: v.contiguous() for k, v in weights.items()}
    if extra:  # parts of a pretraining checkpoint that are not ours
        tensors[prefix + "pooler.dense.weight"] = torch.zeros(HF_CONFIG["hidden_size"], HF_CONFIG["hidden_size"])
        tensors["cls.predictions.bias"] = torch.zeros(HF_CONFIG["vocab_size"])
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_from_pretrained_bert_loads_the_encoder_weights_written(tmp_path, prefix):
    weights = hf_encoder_weights(HF_CONFIG)
    base = write_hf_checkpoint(tmp_path / "bert", weights, prefix=prefix)

    model = from_pretrained_bert(base, num_labels=3, pooling="cls", dropout=0.0)

    assert model.config.num_layers == 2 and model.config.hidden_size == 32 and model.config.num_heads == 4
    assert model.config.num_labels == 3 and model.config.pooling == "cls"
    assert model.classifier.out_features == 3
    state = model.state_dict()
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor), key
    # Every encoder tensor of the model came from the checkpoint (only the head starts fresh).
    assert {k for k in state if not k.startswith("classifier.")} == set(weights)


def test_from_pretrained_bert_rejects_a_checkpoint_missing_a_key(tmp_path):
    weights = hf_encoder_weights(HF_CONFIG)
    del weights["encoder.layer.1.output.dense.weight"]
    base = write_hf_checkpoint(tmp_path / "bert", weights)
    with pytest.raises(TextcompressError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        from_pretrained_bert(base, num_labels=2)


def test_from_pretrained_bert_rejects_another_model_type(tmp_path):
    base = write_hf_checkpoint(tmp_path / "gpt", hf_encoder_weights(HF_CONFIG))
    (base / "config.json").write_text(json.dumps({**HF_CONFIG, "model_type": "gpt2"}))
    with pytest.raises(TextcompressError, match="gpt2"):
        from_pretrained_bert(base, num_labels=2)


def test_from_pretrained_bert_without_weights_file_raises(tmp_path):
    base = write_hf_checkpoint(tmp_path / "bert", hf_encoder_weights(HF_CONFIG))
    (base / "model.safetensors").unlink()
    with pytest.raises(TextcompressError, match="model.safetensors"):
        from_pretrained_bert(base, num_labels=2)
