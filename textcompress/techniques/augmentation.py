"""Data augmentation for distillation (Tang et al., 2019), on word-piece ids.

Each augmented sentence is a training sentence with, independently per piece, a `mask`
chance of becoming [MASK] and a `replace` chance of becoming a piece drawn from the training
unigram distribution, and, with an `ngram` chance, cut to a random n-gram (1-5 pieces). The
teacher labels every augmented sentence (its logits are the soft labels, its argmax the hard
one), so the student sees many more of the teacher's decisions than the data holds.
"""

from __future__ import annotations

import numpy as np

from textcompress.data import Split


def augment_ids(ids: np.ndarray, rng: np.random.Generator, mask_id: int, unigram_ids: np.ndarray,
                unigram_p: np.ndarray, mask: float, replace: float, ngram: float) -> np.ndarray:
    """One augmented copy of a [CLS] … [SEP] sentence, or of a pair [CLS] a [SEP] b [SEP]: the
    special ends and the separators between segments are kept, and only a single sentence is cut
    to an n-gram (the model finds a pair's second segment by its separator)."""
    body = ids[1:-1].copy()
    separator = body == ids[-1]
    if not separator.any() and len(body) > 1 and rng.random() < ngram:
        n = int(rng.integers(1, min(5, len(body)) + 1))
        start = int(rng.integers(0, len(body) - n + 1))
        body = body[start:start + n]
        separator = separator[:n]
    draws = rng.random(len(body))
    body[(draws < mask) & ~separator] = mask_id
    swap = (draws >= mask) & (draws < mask + replace) & ~separator
    if swap.any():
        body[swap] = rng.choice(unigram_ids, size=int(swap.sum()), p=unigram_p)
    return np.concatenate([ids[:1], body, ids[-1:]])


def augmented_split(train: Split, multiplier: int, mask_id: int, seed: int, mask: float = 0.1,
                    replace: float = 0.1, ngram: float = 0.25) -> Split:
    """`multiplier` augmented copies of every training sentence (labels to be set by the teacher)."""
    rng = np.random.default_rng(seed)
    pieces = np.concatenate([ids[1:-1][ids[1:-1] != ids[-1]] for ids in train.input_ids])  # no separators
    unigram_ids, counts = np.unique(pieces, return_counts=True)
    unigram_p = counts / counts.sum()
    out = [augment_ids(ids, rng, mask_id, unigram_ids, unigram_p, mask, replace, ngram)
           for _ in range(multiplier) for ids in train.input_ids]
    texts = [(f"[augmented {k}] {t[0]}", t[1]) if isinstance(t, tuple) else f"[augmented {k}] {t}"
             for k in range(multiplier) for t in train.texts]
    return Split(texts, out, np.zeros(len(out), dtype=np.int64))
