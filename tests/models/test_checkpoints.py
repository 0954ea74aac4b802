"""Tests for textcompress.models.checkpoints: Hugging Face checkpoints converted into the encoder.

BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA classifiers are built tiny and random with
transformers' own classes, saved with `save_pretrained`, converted, and must give transformers'
logits within 1e-5, with padding and with sentence pairs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from textcompress.errors import TextcompressError
from textcompress.models.checkpoints import (
    check_sources, from_pretrained, label_order, max_positions, resolve_base, tokenizer_file,
)

from tests.conftest import TINY_VOCAB, build_tiny_tokenizer
from tests.e2e.tiny_project import write_hf_checkpoint

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


def write_bert_weights(directory, weights: dict, prefix: str = "bert.", extra: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(HF_CONFIG))
    tensors = {prefix + k: v.contiguous() for k, v in weights.items()}
    if extra:  # parts of a pretraining checkpoint that are not ours
        tensors[prefix + "pooler.dense.weight"] = torch.zeros(HF_CONFIG["hidden_size"], HF_CONFIG["hidden_size"])
        tensors["cls.predictions.bias"] = torch.zeros(HF_CONFIG["vocab_size"])
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_from_pretrained_loads_the_encoder_weights_written(tmp_path, prefix):
    weights = hf_encoder_weights(HF_CONFIG)
    base = write_bert_weights(tmp_path / "bert", weights, prefix=prefix)

    model = from_pretrained(base, num_labels=3, pooling="cls", dropout=0.0)

    assert model.config.num_layers == 2 and model.config.hidden_size == 32 and model.config.num_heads == 4
    assert model.config.num_labels == 3 and model.config.pooling == "cls"
    assert model.classifier.out_features == 3
    state = model.state_dict()
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor), key
    # Every encoder tensor of the model came from the checkpoint (only the head starts fresh).
    assert {k for k in state if not k.startswith("classifier.")} == set(weights)


def test_from_pretrained_rejects_a_checkpoint_missing_a_key(tmp_path):
    weights = hf_encoder_weights(HF_CONFIG)
    del weights["encoder.layer.1.output.dense.weight"]
    base = write_bert_weights(tmp_path / "bert", weights)
    with pytest.raises(TextcompressError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        from_pretrained(base, num_labels=2)


def test_from_pretrained_rejects_another_model_type(tmp_path):
    base = write_bert_weights(tmp_path / "gpt", hf_encoder_weights(HF_CONFIG))
    (base / "config.json").write_text(json.dumps({**HF_CONFIG, "model_type": "gpt2"}))
    with pytest.raises(TextcompressError, match="gpt2"):
        from_pretrained(base, num_labels=2)


def test_from_pretrained_without_weights_file_raises(tmp_path):
    base = write_bert_weights(tmp_path / "bert", hf_encoder_weights(HF_CONFIG))
    (base / "model.safetensors").unlink()
    with pytest.raises(TextcompressError, match="model.safetensors"):
        from_pretrained(base, num_labels=2)


# ---------------------------------------------------------------------------
# Exact conversion, checked against transformers' own models

SEP, PAD_RUN = 3, 7  # the separator of the pairs below; the id padding is written with on our side


def tiny_hf_classifier(kind: str, folder):
    """Weights drawn wider than transformers' default (std 0.02) so that logits differ by whole
    units and a conversion mistake shows far above the tolerance; activations other than GELU."""
    activation = {"bert": {"hidden_act": "gelu_new"}, "distilbert": {"activation": "relu"}}.get(kind, {})
    return write_hf_checkpoint(folder, kind, num_labels=3, initializer_range=0.3, **activation)


def pair_batch(pad_id: int):
    """Three rows, right-padded: a single sentence, a pair, a longer pair; with transformers'
    token types (0 up to and including the first separator)."""
    rows = [[2, 11, 12, 13, SEP], [2, 14, 15, SEP, 16, 17, 18, SEP], [2, 19, 20, 21, 22, SEP, 23, 24, 25, 26, 27, SEP]]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        types[i, row.index(SEP) + 1:len(row)] = 1
    return ids, mask, types


ARCHITECTURES = ["bert", "roberta", "xlm-roberta", "distilbert", "electra"]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_a_converted_classifier_gives_transformers_logits_with_padding_and_pairs(kind, tmp_path):
    reference = tiny_hf_classifier(kind, tmp_path)
    pad_id = reference.config.pad_token_id or 0
    ids, mask, types = pair_batch(pad_id)
    with torch.no_grad():
        inputs = {"input_ids": ids, "attention_mask": mask}
        if kind != "distilbert":
            inputs["token_type_ids"] = types
        expected = reference(**inputs).logits
        model = from_pretrained(tmp_path, num_labels=3, separator=SEP, label_rows=[0, 1, 2]).eval()
        # Padding ids are whatever batching writes: the attention mask alone must hide them.
        got = model(torch.where(mask.bool(), ids, torch.full_like(ids, PAD_RUN)), mask)
    assert expected.abs().max() > 0.5  # logits large enough for the tolerance to mean something
    assert (got - expected).abs().max() < 1e-5, (got - expected).abs().max()


def test_the_conversion_would_be_caught_without_token_types(tmp_path):
    """The pair rows above need their token types: ignoring them moves BERT's logits far beyond 1e-5."""
    reference = tiny_hf_classifier("bert", tmp_path)
    ids, mask, types = pair_batch(0)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        single = from_pretrained(tmp_path, num_labels=3, label_rows=[0, 1, 2]).eval()(ids, mask)
    assert (single[1:] - expected[1:]).abs().max() > 1e-2
    torch.testing.assert_close(single[0], expected[0], atol=1e-5, rtol=0)  # the single sentence has no second segment


def test_a_classifiers_outputs_follow_the_datas_label_order(tmp_path):
    reference = tiny_hf_classifier("roberta", tmp_path)
    ids, mask, _ = pair_batch(1)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        reordered = from_pretrained(tmp_path, num_labels=3, label_rows=[2, 0, 1]).eval()(ids, mask)
    torch.testing.assert_close(reordered, expected[:, [2, 0, 1]], atol=1e-5, rtol=0)


def test_a_base_checkpoint_gets_a_fresh_head_and_the_requested_pooling(tmp_path):
    tiny_hf_classifier("electra", tmp_path)
    model = from_pretrained(tmp_path, num_labels=2, pooling="mean")
    assert model.pooler is None and model.config.pooling == "mean" and model.classifier.out_features == 2
    assert model.config.embedding_width == 16 and model.embeddings.project.out_features == 32


# ---------------------------------------------------------------------------
# Labels, tokenizers and bad folders

@pytest.mark.parametrize("id2label, data_labels, expected", [
    ({"0": "NEGATIVE", "1": "POSITIVE"}, ["NEGATIVE", "POSITIVE"], [0, 1]),
    ({"0": "pos", "1": "neg"}, ["neg", "pos"], [1, 0]),         # the data's order: sorted names
    (None, [0, 1], [0, 1]),                                      # unnamed outputs match 0..n-1
    ({"0": "LABEL_0", "1": "LABEL_1"}, [0, 1], [0, 1]),
    ({"0": "neg", "1": "pos"}, [0, 1], None),                    # another task's names
    ({"0": "a", "1": "b", "2": "c"}, ["a", "b"], None),          # another number of labels
])
def test_label_order_maps_the_datas_labels_to_the_classifiers_outputs(id2label, data_labels, expected):
    hf = {"architectures": ["BertForSequenceClassification"], **({"id2label": id2label} if id2label else {})}
    assert label_order(hf, data_labels) == expected


def test_a_folder_without_tokenizer_json_gets_the_fast_tokenizer_autotokenizer_builds(tmp_path):
    folder = tmp_path / "bert"
    write_hf_checkpoint(folder, "bert")
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")  # a slow tokenizer's files only
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    built = tokenizer_file(folder, tmp_path)
    assert built == tmp_path / "tokenizer.json" and not (folder / "tokenizer.json").exists()  # the folder is untouched
    ours = Tokenizer.from_file(str(built)).encode("The movie was great", "it was dull")
    assert ours.ids == build_tiny_tokenizer().encode("The movie was great", "it was dull").ids  # the same WordPiece vocabulary
    assert ours.type_ids == [0] * 6 + [1] * 4


def test_a_folder_with_no_tokenizer_at_all_is_refused_with_its_name(tmp_path):
    folder = tmp_path / "bare"
    write_hf_checkpoint(folder, "bert")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(TextcompressError, match=rf"{folder}: no tokenizer files \(tokenizer.json, vocab.txt, vocab.json, \*.model\)\. Fix: save the tokenizer"):
        tokenizer_file(folder, tmp_path)


def test_a_folder_without_config_json_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(TextcompressError, match=r"weights: config.json is missing\. Fix: point at a folder written by"):
        resolve_base(str(tmp_path / "weights"))


def test_a_config_missing_a_size_names_the_key(tmp_path):
    folder = tmp_path / "bert"
    write_hf_checkpoint(folder, "bert")
    config = json.loads((folder / "config.json").read_text())
    del config["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextcompressError, match=r"config.json lacks 'num_hidden_layers'"):
        from_pretrained(folder, num_labels=2)


def test_relative_positions_do_not_convert(tmp_path):
    folder = tmp_path / "bert"
    write_hf_checkpoint(folder, "bert", position_embedding_type="relative_key")
    with pytest.raises(TextcompressError, match="position_embedding_type 'relative_key' does not convert"):
        from_pretrained(folder, num_labels=2)


def test_a_classifier_saved_without_its_head_is_refused(tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "roberta"
    write_hf_checkpoint(folder, "roberta")
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("classifier.")}
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(TextcompressError, match=r"without its head weights \(classifier.dense, classifier.out_proj\)"):
        from_pretrained(folder, num_labels=2, label_rows=[0, 1])


def test_roberta_positions_count_from_the_pad_id(tmp_path):
    folder = tmp_path / "roberta"
    write_hf_checkpoint(folder, "roberta")
    assert max_positions(folder) == 40 - 2


# ---------------------------------------------------------------------------
# Checked before anything runs

def sources_params(base: str, finetuned: str | None = None, student_base: str | None = None) -> dict:
    from textcompress.config import DEFAULTS
    import copy

    params = copy.deepcopy(DEFAULTS)
    params["base_model"], params["teach"]["finetuned_teacher"] = base, finetuned
    if student_base:
        params["candidates"]["small"] = [{"distill": {"student": "bert", "student_base": student_base}}]
    return params


def test_check_sources_passes_good_checkpoints(tmp_path):
    write_hf_checkpoint(tmp_path / "clf", "roberta")
    write_hf_checkpoint(tmp_path / "deberta", "deberta-v2", classifier=False)
    params = sources_params(str(tmp_path / "deberta"), str(tmp_path / "clf"), str(tmp_path / "clf"))
    params["data"]["max_length"] = 38  # the tiny RoBERTa's 40 positions, counted from 2
    check_sources(params)


@pytest.mark.parametrize("breakage, key, message", [
    ("weights", "base_model", "no model.safetensors or pytorch_model.bin"),
    ("tokenizer", "base_model", "no tokenizer files"),
    ("model_type", "base_model", "model_type 'word2vec' is neither one that converts"),
    ("encoder", "teach.finetuned_teacher", "is not a fine-tuned classifier"),
    ("missing", "candidates.small: distill.student_base", "neither a packaged base"),
])
def test_check_sources_names_the_key_the_folder_and_the_fix(tmp_path, breakage, key, message):
    folder = tmp_path / "ckpt"
    write_hf_checkpoint(folder, "bert", classifier=breakage != "encoder")
    if breakage == "weights":
        (folder / "model.safetensors").unlink()
    if breakage == "tokenizer":
        (folder / "tokenizer.json").unlink()
    if breakage == "model_type":
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                        "model_type": "word2vec"}))
    params = {"base_model": sources_params(str(folder)),
              "teach.finetuned_teacher": sources_params(str(tmp_path / "ok"), str(folder)),
              "candidates.small: distill.student_base": sources_params(str(tmp_path / "ok"), None, "no-such-model/x")}[key]
    write_hf_checkpoint(tmp_path / "ok", "bert")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(TextcompressError, match="Fix:") as err:
        check_sources(params)
    assert str(err.value).startswith(f"params.yaml `{key}`: ") and message in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside the checkpoint


def test_params_validation_and_conversion_agree_on_which_architectures_convert():
    """techniques.base decides the teacher's kind without torch; the converters are the truth."""
    from textcompress.models import CONVERTED_ACTIVATIONS, CONVERTED_MODEL_TYPES
    from textcompress.models.checkpoints import ARCHITECTURES
    from textcompress.models.encoder import ACTIVATIONS

    assert set(CONVERTED_MODEL_TYPES) == set(ARCHITECTURES) and set(CONVERTED_ACTIVATIONS) <= set(ACTIVATIONS)


@pytest.mark.parametrize("odd", [{"position_embedding_type": "relative_key"}, {"hidden_act": "gelu_fast"}])
def test_a_bert_that_does_not_convert_runs_in_transformers_instead(tmp_path, odd):
    from textcompress.models.checkpoints import load_teacher
    from textcompress.models.hf_classifier import HFClassifier
    from textcompress.techniques.base import teacher_kind

    reference = write_hf_checkpoint(tmp_path / "bert", "bert", initializer_range=0.3, **odd)
    teacher = load_teacher(tmp_path / "bert", [0, 1]).eval()
    assert isinstance(teacher, HFClassifier) and teacher_kind("transformer", str(tmp_path / "bert")) == "transformers"
    ids, mask, _ = pair_batch(0)
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids, mask), reference(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=0)


def test_a_transformers_run_classifier_of_other_labels_is_refused_not_silently_reused(tmp_path):
    from textcompress.models.checkpoints import load_teacher

    write_hf_checkpoint(tmp_path / "deberta", "deberta-v2", id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1})
    with pytest.raises(TextcompressError, match=r"a classifier of other labels \(\['NEG', 'POS'\], the data's: \[0, 1\]\)"):
        load_teacher(tmp_path / "deberta", [0, 1])


def test_a_student_base_must_convert_and_cover_max_length(tmp_path):
    write_hf_checkpoint(tmp_path / "deberta", "deberta-v2", classifier=False)
    write_hf_checkpoint(tmp_path / "bert", "bert", classifier=False)  # 40 positions
    params = sources_params(str(tmp_path / "deberta"), None, str(tmp_path / "deberta"))
    with pytest.raises(TextcompressError, match="a student is cut from an encoder that converts"):
        check_sources(params)
    params = sources_params(str(tmp_path / "deberta"), None, str(tmp_path / "bert"))
    with pytest.raises(TextcompressError, match="40 positions, fewer than data.max_length 128. Fix: lower data.max_length to 40"):
        check_sources(params)
    params["data"]["max_length"] = 40
    check_sources(params)
