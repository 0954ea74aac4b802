"""Vocabulary trimming: drop word-pieces the training data never uses.

The word-piece table is most of a small model's bytes (30,522 × 384 floats in MiniLM), and a
single-task corpus uses a fraction of it. Kept: the special tokens, every single-character
piece (so that any word still tokenizes into pieces rather than [UNK]), pieces seen at least
`min_count` times in training, and up to `floor` pieces in the original order. The tokenizer
is rewritten with the new ids, so the exported model and its tokenizer agree; the training and
validation sets in the compress context are re-tokenized for the steps that follow.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from textcompress.data import load_tokenizer, retokenized, token_counts
from textcompress.errors import RecipeError
from textcompress.models.encoder import TextClassifier, count_parameters
from textcompress.techniques.base import Technique


def pieces_to_keep(vocab: dict[str, int], special: set[str], counts, min_count: int, floor: int) -> list[str]:
    """Kept pieces in their original id order; `counts[id]` is how often the training data uses a piece."""
    by_id = sorted(vocab, key=vocab.get)
    keep = {t for t in by_id if t in special or len(t.removeprefix("##")) == 1 or counts[vocab[t]] >= min_count}
    for t in by_id[:floor]:
        keep.add(t)
    return [t for t in by_id if t in keep]


def trimmed_tokenizer_json(tokenizer_json: dict, kept: list[str]) -> dict:
    """The tokenizer with only `kept` pieces, renumbered 0..n-1 in their old order."""
    new_id = {t: i for i, t in enumerate(kept)}
    out = copy.deepcopy(tokenizer_json)
    out["model"]["vocab"] = new_id
    for added in out.get("added_tokens", []):
        added["id"] = new_id[added["content"]]
    for special in (out.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [new_id[t] for t in special["tokens"]]
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_token"]]
    return out


def keep_rows(model: nn.Module, old_ids: np.ndarray) -> nn.Module:
    """A copy of `model` whose word-piece table holds only rows `old_ids`, in that order."""
    result = copy.deepcopy(model)
    result.config = replace(model.config, vocab_size=len(old_ids))
    separator = getattr(model.config, "segment_separator", None) if model.kind == "transformer" else None
    if separator is not None:  # the model finds a pair's second segment by its separator's new id
        result.config.segment_separator = result.embeddings.separator = int(np.flatnonzero(old_ids == separator)[0])
    owner = result.embeddings if model.kind == "transformer" else result  # recurrent and CNN models own theirs
    table = owner.word_embeddings.weight.detach()
    owner.word_embeddings = nn.Embedding(len(old_ids), table.shape[1])
    owner.word_embeddings.weight.data = table[old_ids].clone()
    return result


def apply_trim_vocab(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `trim_vocab` step: word-pieces unused in training dropped from the table, the tokenizer
    rewritten to match (written to ctx.workdir). Returns (model, details)."""
    tokenizer_json = json.loads(Path(ctx.tokenizer_file).read_text())
    if tokenizer_json["model"].get("type") != "WordPiece":  # BPE merges and Unigram scores name pieces too
        raise RecipeError("trim_vocab", f"trims WordPiece vocabularies (BERT's, DistilBERT's, ELECTRA's); this "
                          f"tokenizer is {tokenizer_json['model'].get('type')}", "remove trim_vocab for this model")
    vocab = tokenizer_json["model"]["vocab"]
    if model.config.vocab_size != len(vocab):
        raise RecipeError("trim_vocab", "the model's vocabulary no longer matches its tokenizer (trimmed twice?)",
                          "keep one trim_vocab step in the recipe")
    special = {a["content"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
    counts = token_counts(ctx.train, len(vocab))
    kept = pieces_to_keep(vocab, special, counts, args["min_count"], args["floor"])
    if "[PAD]" in vocab and kept.index("[PAD]") != 0:
        raise RecipeError("trim_vocab", "[PAD] must stay id 0, which batching pads with",
                          "use a tokenizer whose [PAD] is id 0, as BERT's is")
    old_ids = np.array([vocab[t] for t in kept])

    result = keep_rows(model, old_ids)
    # The steps that follow feed the teacher the new ids too (hidden-state distillation): it keeps
    # the same rows, so it reads every training sentence as before. (A teacher that runs in
    # transformers is never fed ids again: its logits are cached.)
    if ctx.teacher.kind == "transformer" and ctx.teacher.config.vocab_size == len(vocab):
        ctx.teacher = keep_rows(ctx.teacher, old_ids)

    new_json = trimmed_tokenizer_json(tokenizer_json, kept)
    ctx.tokenizer_file = Path(ctx.workdir) / "tokenizer.json"
    ctx.tokenizer_file.write_text(json.dumps(new_json, ensure_ascii=False))
    # Tokenized again (pieces seen fewer than min_count times now split further), as serving will.
    tokenizer = load_tokenizer(ctx.tokenizer_file, ctx.max_length)
    ctx.train, ctx.validation = retokenized(ctx.train, tokenizer), retokenized(ctx.validation, tokenizer)
    details = {"vocab_before": len(vocab), "vocab_after": len(kept), "min_count": args["min_count"],
               "floor": args["floor"], "params_before": count_parameters(model), "params_after": count_parameters(result)}
    return result, details


TECHNIQUES = (
    Technique("trim_vocab", "pruning", defaults={"min_count": 1, "floor": 0},
              bounds={"min_count": (1, None), "floor": (0, None)},
              models=("transformer", "recurrent", "cnn"), apply=apply_trim_vocab),
)
