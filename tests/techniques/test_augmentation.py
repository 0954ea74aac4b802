"""Tests for textcompress.techniques.augmentation and its use in `distill`: special tokens stay,
n-grams are short, rates follow the arguments, and the teacher labels what was made."""

from __future__ import annotations

import numpy as np

from textcompress.data import Split, load_split
from textcompress.models.encoder import load_bundle
from textcompress.techniques import TECHNIQUES, TechniqueContext
from textcompress.techniques.augmentation import augment_ids, augmented_split
from textcompress.techniques.distillation import apply_distill
from textcompress.training import predict_logits

CLS, SEP, MASK = 2, 3, 4


def sentence(n: int) -> np.ndarray:
    return np.array([CLS] + list(range(10, 10 + n)) + [SEP])


def test_augmented_sentences_keep_their_ends_and_follow_the_rates():
    rng = np.random.default_rng(0)
    unigram = np.array([50, 51]), np.array([0.5, 0.5])
    masked = [augment_ids(sentence(20), rng, MASK, *unigram, mask=0.3, replace=0.0, ngram=0.0) for _ in range(200)]
    assert all(a[0] == CLS and a[-1] == SEP and len(a) == 22 for a in masked)
    assert np.mean([np.mean(a[1:-1] == MASK) for a in masked]) == pytest_approx(0.3)
    replaced = [augment_ids(sentence(20), rng, MASK, *unigram, mask=0.0, replace=0.5, ngram=0.0) for _ in range(200)]
    assert np.mean([np.isin(a[1:-1], [50, 51]).mean() for a in replaced]) == pytest_approx(0.5)
    cut = [augment_ids(sentence(20), rng, MASK, *unigram, mask=0.0, replace=0.0, ngram=1.0) for _ in range(50)]
    assert all(1 <= len(a) - 2 <= 5 for a in cut)
    # a cut keeps a contiguous run of the sentence
    assert all(np.all(np.diff(a[1:-1]) == 1) for a in cut)


def pytest_approx(value):
    import pytest

    return pytest.approx(value, abs=0.05)


def test_augmented_split_makes_multiplier_copies():
    train = Split(["a", "b"], [sentence(3), sentence(4)], np.array([0, 1]))
    extra = augmented_split(train, 3, MASK, seed=0)
    assert len(extra) == 6 and all(t.startswith("[augmented") for t in extra.texts)


def test_distill_with_augmentation_trains_on_teacher_labelled_copies(tiny_prepared, tiny_teacher):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0,
                          tokenizer_file=tiny_prepared / "tokenizer.json")
    args = {**TECHNIQUES["distill"].defaults, "layers": 1, "epochs": 1, "lr": 1e-3, "augment": 2}
    _, details = apply_distill(teacher, args, ctx)
    assert details["augmented_rows"] == 2 * len(train)
    # one epoch over three times the rows
    assert details["history"][0]["steps"] == -(-3 * len(train) // args["batch_size"])
    assert len(ctx.train) == len(train)  # the caller's context is left as it was


def test_augmented_rows_are_labelled_by_the_teacher_once_for_all_candidates(tiny_prepared, tiny_teacher, tmp_path):
    teacher, _ = load_bundle(tiny_teacher)
    train = load_split(tiny_prepared, "train")
    ctx = TechniqueContext(teacher, train, load_split(tiny_prepared, "validation"), predict_logits(teacher, train), seed=0,
                          tokenizer_file=tiny_prepared / "tokenizer.json", cache_dir=tmp_path)
    calls = []
    original = teacher.forward
    teacher.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    args = {**TECHNIQUES["distill"].defaults, "student": "cnn", "filters": 4, "epochs": 1, "augment": 1}
    apply_distill(teacher, args, ctx)
    labelled = len(calls)
    assert labelled > 0 and len(list(tmp_path.glob("*/logits.npy"))) == 1
    _, details = apply_distill(teacher, {**args, "student": "gru", "layers": 1, "hidden_size": 8}, ctx)
    assert len(calls) == labelled and details["augmented_rows"] == len(train)


def test_a_pair_keeps_its_separator_and_both_segments():
    """The model finds a pair's second segment by the separator: it is never masked, replaced or cut."""
    pair = np.array([CLS, 10, 11, 12, SEP, 20, 21, 22, 23, SEP])
    rng = np.random.default_rng(0)
    copies = [augment_ids(pair, rng, MASK, np.array([30, 31]), np.array([0.5, 0.5]), mask=0.5, replace=0.4, ngram=1.0)
              for _ in range(200)]
    assert all(len(c) == len(pair) and c[4] == SEP and c[0] == CLS and c[-1] == SEP for c in copies)
    assert all(list(c).count(SEP) == 2 for c in copies)  # no separator drawn into the body either
    assert np.mean([np.mean(c[1:4] != pair[1:4]) for c in copies]) > 0.5  # the words did change


def test_the_unigram_pool_of_pairs_holds_no_separator():
    pairs = Split([("a", "b")] * 50, [np.array([CLS, 10, SEP, 11, SEP])] * 50, np.zeros(50, dtype=np.int64))
    out = augmented_split(pairs, 2, MASK, seed=0, mask=0.0, replace=1.0, ngram=0.0)
    assert all(list(ids).count(SEP) == 2 and ids[2] == SEP for ids in out.input_ids)
    assert out.texts[0] == ("[augmented 0] a", "b")
