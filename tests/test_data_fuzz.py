"""Fuzzing `prepare` with malformed files: each mutation has the outcome it must have (a prepared
directory, or a DataError that names the file and says the fix), never another exception, and a
failure writes nothing."""

from __future__ import annotations

import random

import pytest

import re

from tests.conftest import tiny_sentiment_rows
from textcompress.config import DEFAULTS
from textcompress.data import prepare
from textcompress.errors import DataError

GOOD = "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in tiny_sentiment_rows(20, 3))


def mutations(rng: random.Random) -> list[tuple[str, bytes]]:
    good = GOOD.encode()
    lines = GOOD.splitlines()
    return [
        ("random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))),
        ("random bytes after a header", b"sentence\tlabel\n" + bytes(rng.randrange(256) for _ in range(200))),
        ("commas instead of tabs", GOOD.replace("\t", ",").encode()),
        ("semicolons instead of tabs", GOOD.replace("\t", ";").encode()),
        ("a huge line", (GOOD + "good " * 200_000 + "\t1\n").encode()),
        ("mixed label types", (GOOD + "a bad movie\tnegative\n").encode()),
        ("float labels", "".join(l.replace("\t1", "\t1.5") + "\n" for l in lines).encode()),
        ("BOM and CRLF", b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode()),
        ("UTF-16", GOOD.encode("utf-16")),
        ("truncated mid-line", good[: rng.randrange(len(good) // 2, len(good))]),
        ("NUL bytes", good.replace(b"movie", b"mo\x00vie")),
        ("a shuffled header", ("label\tsentence\n" + "\n".join(lines[1:]) + "\n").encode()),
        ("extra tab", (GOOD + "a\tgood\tmovie\t1\n").encode()),
        ("empty file", b""),
        ("only newlines", b"\n\n\n"),
        ("a label column only", "label\n1\n0\n".encode()),
    ]


# Files that are still well-formed: a BOM and Windows line ends, or a NUL inside a sentence (text).
ACCEPTED = {"BOM and CRLF", "NUL bytes"}


def must_be_accepted(name: str, content: bytes) -> bool:
    """Every other mutation must be refused, except a file truncated right after a whole row."""
    if name == "truncated mid-line":
        last = content.decode().split("\n")[-1]
        return last == "" or re.fullmatch(r"[^\t]+\t[01]", last) is not None
    return name in ACCEPTED


@pytest.mark.parametrize("seed", range(3))
def test_prepare_on_malformed_training_files_fails_cleanly_or_succeeds(tmp_path, tiny_tokenizer_file, seed):
    rng = random.Random(seed)
    validation = tmp_path / "validation.tsv"
    validation.write_text(GOOD)
    for name, content in mutations(rng):
        train = tmp_path / "train.tsv"
        train.write_bytes(content)
        out = tmp_path / f"prepared-{seed}"
        params = dict(DEFAULTS["data"], train=str(train), validation=str(validation), max_length=32)
        try:
            prepare(params, tiny_tokenizer_file, out)
        except DataError as err:
            assert not must_be_accepted(name, content), (name, str(err))
            assert str(train) in str(err) or str(validation) in str(err), (name, str(err))
            assert "Fix:" in str(err), (name, str(err))
            assert not out.exists(), name
        else:
            assert must_be_accepted(name, content), f"{name}: accepted, but it must be refused"
            assert (out / "train.parquet").is_file(), name
            import shutil

            shutil.rmtree(out)
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], name
