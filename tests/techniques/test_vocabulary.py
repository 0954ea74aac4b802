"""Tests for textcompress.techniques.vocabulary: unseen pieces dropped, special and single-character
pieces kept, and the rewritten tokenizer agrees with the trimmed model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import torch

from textcompress.data import load_split, load_tokenizer, pad_batch
from textcompress.models.encoder import TextClassifier
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.vocabulary import apply_trim_vocab, pieces_to_keep

from tests.conftest import tiny_model_config


def half_train_context(model, tiny_prepared, tmp_path) -> TechniqueContext:
    """A compress context whose training set is the first half of the tiny one, so that some
    pieces of the tiny vocabulary go unseen."""
    train = load_split(tiny_prepared, "train")
    half = type(train)(train.texts[:20], train.input_ids[:20], train.labels[:20])
    return TechniqueContext(model, half, load_split(tiny_prepared, "validation"), np.zeros((20, 2), np.float32), 0,
                           tokenizer_file=tiny_prepared / "tokenizer.json", max_length=32, workdir=tmp_path)


def test_pieces_to_keep_keeps_specials_characters_seen_and_floor():
    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "##b": 3, "apple": 4, "##ness": 5, "zebra": 6}
    counts = Counter({4: 3, 5: 1})
    assert pieces_to_keep(vocab, {"[PAD]", "[UNK]"}, counts, 1, 0) == ["[PAD]", "[UNK]", "a", "##b", "apple", "##ness"]
    assert pieces_to_keep(vocab, {"[PAD]", "[UNK]"}, counts, 2, 0) == ["[PAD]", "[UNK]", "a", "##b", "apple"]
    assert "zebra" in pieces_to_keep(vocab, set(), counts, 1, 7)


def test_trim_vocab_shrinks_the_table_and_the_new_tokenizer_feeds_the_same_rows(tiny_prepared, tmp_path):
    torch.manual_seed(0)
    model = TextClassifier(tiny_model_config()).eval()
    ctx = half_train_context(model, tiny_prepared, tmp_path)
    train, before_validation = load_split(tiny_prepared, "train"), ctx.validation
    trimmed, details = apply_trim_vocab(model, {**TECHNIQUES["trim_vocab"].defaults}, ctx)

    old_vocab = json.loads((tiny_prepared / "tokenizer.json").read_text())["model"]["vocab"]
    new_json = json.loads(ctx.tokenizer_file.read_text())
    assert details["vocab_after"] == trimmed.config.vocab_size == len(new_json["model"]["vocab"]) < len(old_vocab)
    assert new_json["model"]["vocab"]["[PAD]"] == 0
    cls = new_json["model"]["vocab"]["[CLS]"]
    assert new_json["post_processor"]["special_tokens"]["[CLS]"]["ids"] == [cls]
    tokenizer = load_tokenizer(ctx.tokenizer_file, 32)
    encoded = tokenizer.encode(train.texts[0])
    assert encoded.ids[0] == cls and max(encoded.ids) < trimmed.config.vocab_size
    # Each kept piece keeps its embedding row: the trimmed model computes what the full one did
    # on a sentence made only of kept pieces.
    ids_new = [np.asarray(tokenizer.encode(t).ids) for t in train.texts[:4]]
    ids_old = train.input_ids[:4]
    with torch.no_grad():
        torch.testing.assert_close(trimmed(*pad_batch(ids_new)), model(*pad_batch(ids_old)))
    assert len(ctx.validation) == len(before_validation)
    assert all(max(ids) < trimmed.config.vocab_size for ids in ctx.validation.input_ids)


def test_after_trimming_the_teacher_reads_the_new_ids_as_it_read_the_old(tiny_prepared, tmp_path):
    # Hidden-state distillation after a trim feeds the teacher the re-tokenized training ids.
    torch.manual_seed(1)
    teacher = TextClassifier(tiny_model_config()).eval()
    ctx = half_train_context(teacher, tiny_prepared, tmp_path)
    old_train = ctx.train
    trimmed, _ = apply_trim_vocab(teacher, {**TECHNIQUES["trim_vocab"].defaults}, ctx)
    assert ctx.teacher is not teacher and ctx.teacher.config.vocab_size == trimmed.config.vocab_size
    with torch.no_grad():
        for new_ids, old_ids in zip(ctx.train.input_ids[:6], old_train.input_ids[:6]):
            torch.testing.assert_close(ctx.teacher.hidden_states(*pad_batch([new_ids]))[-1],
                                       teacher.hidden_states(*pad_batch([old_ids]))[-1])


def test_trimming_moves_the_pair_separator_with_its_row():
    """A model of sentence pairs finds the second segment by its separator's id, which trimming changes."""
    from dataclasses import replace

    from textcompress.techniques.vocabulary import keep_rows
    from tests.conftest import SEP_ID

    torch.manual_seed(0)
    model = TextClassifier(replace(tiny_model_config(), segment_separator=SEP_ID)).eval()
    old_ids = np.array([0, 1, 2, 10, SEP_ID, 11, 12, 13])  # the separator (id 3) becomes id 4
    trimmed = keep_rows(model, old_ids).eval()
    assert trimmed.config.segment_separator == 4 and trimmed.embeddings.separator == 4
    old_pair = torch.tensor([[2, 10, SEP_ID, 11, 12, SEP_ID]])
    new_pair = torch.tensor([[int(np.flatnonzero(old_ids == i)[0]) for i in old_pair[0]]])
    with torch.no_grad():
        torch.testing.assert_close(trimmed(new_pair, torch.ones_like(new_pair)), model(old_pair, torch.ones_like(old_pair)))


def test_a_bpe_vocabulary_is_refused_before_anything_is_trimmed(tmp_path):
    """BPE merges (RoBERTa) and Unigram scores name pieces as well: trimming the vocabulary alone breaks them."""
    from types import SimpleNamespace

    import pytest
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    from textcompress.errors import RecipeError

    Tokenizer(BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).save(str(tmp_path / "tokenizer.json"))
    model = TextClassifier(tiny_model_config())
    with pytest.raises(RecipeError, match="trims WordPiece vocabularies .*; this tokenizer is BPE. Fix: remove trim_vocab"):
        apply_trim_vocab(model, {"min_count": 1, "floor": 0}, SimpleNamespace(tokenizer_file=tmp_path / "tokenizer.json"))
