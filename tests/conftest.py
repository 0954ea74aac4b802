"""Shared fixtures: a tiny WordPiece tokenizer and a helper that writes data files.

The tokenizer is deliberately generic (ordinary English review words) so that data, model
export and end-to-end tests can all reuse it without downloading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from two threads, and OpenMP threads fighting over two cores
# (with each other or a training job) slow everything down many times.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, in this order

WORDS = [
    # function words
    "the", "a", "an", "is", "was", "are", "were", "be", "not", "very", "and", "or", "but",
    "it", "this", "that", "i", "you", "of", "to", "in", "so", "too", "no", "really",
    # sentiment words
    "good", "bad", "great", "awful", "fun", "boring", "love", "hate", "loved", "hated",
    "best", "worst", "nice", "terrible", "excellent", "dull", "like", "enjoyed",
    # topic words
    "movie", "film", "plot", "acting", "story", "actor", "actors", "music", "ending", "scene",
    # punctuation
    ".", ",", "!", "?", "'",
    # word pieces
    "##s", "##ed", "##ing", "##ly",
]

TINY_VOCAB: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS)}
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = (TINY_VOCAB[t] for t in SPECIAL_TOKENS)


def build_tiny_tokenizer(vocab: dict[str, int] | None = None):
    """A BERT-style WordPiece tokenizer over TINY_VOCAB (or `vocab`, with the same special ids):
    lowercase, [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tokenizer = Tokenizer(WordPiece(vocab=dict(vocab or TINY_VOCAB), unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_file(tmp_path_factory) -> Path:
    """Path to a saved tokenizer.json for the tiny WordPiece tokenizer (see TINY_VOCAB)."""
    path = tmp_path_factory.mktemp("tiny_tokenizer") / "tokenizer.json"
    build_tiny_tokenizer().save(str(path))
    return path


def write_text_file(path: str | Path, content: str | bytes) -> Path:
    """Write `content` exactly as given (str is UTF-8 encoded, no newline translation)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.fixture
def write_file(tmp_path):
    """write_file("train.tsv", "sentence\\tlabel\\n...") -> a path under this test's tmp_path."""

    def write(name: str, content: str | bytes) -> Path:
        return write_text_file(tmp_path / name, content)

    return write


# ---------------------------------------------------------------------------
# A tiny, learnable sentiment task and a tiny model, shared by the model, export and e2e tests.

POSITIVE = ["good", "great", "fun", "love", "loved", "best", "nice", "excellent", "enjoyed", "like"]
NEGATIVE = ["bad", "awful", "boring", "hate", "hated", "worst", "terrible", "dull"]
TOPICS = ["movie", "film", "plot", "acting", "story", "music", "ending", "scene"]


def tiny_sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Sentences like "the plot was really great ." labelled 1, or "... awful ..." labelled 0."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        filler = " ".join(rng.choice(["really", "very", "so", "too", "and", "it"]) for _ in range(rng.randint(0, 6)))
        rows.append((f"the {rng.choice(TOPICS)} was {filler} {word} .".replace("  ", " "), label))
    return rows


def write_tiny_tsv(path: Path, rows: list[tuple]) -> Path:
    """(sentence, label) rows, or (sentence, second sentence, label) rows of a pair task."""
    header = "sentence\tlabel\n" if len(rows[0]) == 2 else "sentence\tsecond\tlabel\n"
    return write_text_file(path, header + "".join("\t".join(map(str, row)) + "\n" for row in rows))


def tiny_model_config(num_labels: int = 2, layers: int = 2):
    from textcompress.models.encoder import EncoderConfig

    return EncoderConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_layers=layers, num_heads=4,
                         intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tiny_tokenizer_file) -> Path:
    """A prepared directory (see textcompress.data.prepare) of the tiny sentiment task."""
    from textcompress.config import DEFAULTS
    from textcompress.data import prepare

    root = tmp_path_factory.mktemp("tiny_data")
    params = dict(DEFAULTS["data"], train=str(write_tiny_tsv(root / "train.tsv", tiny_sentiment_rows(240, 1))),
                  validation=str(write_tiny_tsv(root / "validation.tsv", tiny_sentiment_rows(80, 2))), max_length=32)
    prepare(params, tiny_tokenizer_file, root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_prepared) -> Path:
    """A tiny 2-layer classifier trained for a few epochs on the tiny task, saved as a bundle."""
    import torch

    from textcompress.data import load_labels, load_split
    from textcompress.models.encoder import TextClassifier, save_bundle
    from textcompress.training import train_classifier

    torch.manual_seed(0)
    model = TextClassifier(tiny_model_config(layers=2))
    train_classifier(model, load_split(tiny_prepared, "train"), epochs=4, lr=3e-3, batch_size=16, seed=0)
    out = tmp_path_factory.mktemp("tiny_teacher") / "teacher"
    save_bundle(model, out, tiny_prepared / "tokenizer.json", load_labels(tiny_prepared))
    return out


def export_model_dir(model, bundle_dir: Path, out_dir: Path) -> Path:
    """An exported candidate directory as `export` writes it: model.onnx, tokenizer.json, labels.json."""
    import shutil

    from textcompress.deploy.export import export_onnx

    out_dir.mkdir(parents=True)
    export_onnx(model, out_dir / "model.onnx")
    for name in ("tokenizer.json", "labels.json"):
        shutil.copyfile(Path(bundle_dir) / name, out_dir / name)
    return out_dir


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (it takes about 10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    # 180 s, not the harness's 30: the server starts slowly on a busy 2-core machine (as the CLI allows it).
    with prefect_test_harness(server_startup_timeout=180):
        yield
