"""Tests for the `prepare` stage as it runs: the checkpoint whose tokenizer reads the data, and
what it refuses before writing anything."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import TINY_VOCAB, build_tiny_tokenizer, tiny_sentiment_rows, write_tiny_tsv
from tests.e2e.tiny_project import write_hf_checkpoint, write_tiny_base
from textcompress.errors import ERROR_FILE_ENV, StageError


def run_prepare(tmp_path, monkeypatch, base, **data) -> StageError | None:
    from textcompress.stages import prepare

    write_tiny_tsv(tmp_path / "train.tsv", tiny_sentiment_rows(20, 1))
    write_tiny_tsv(tmp_path / "validation.tsv", tiny_sentiment_rows(10, 2))
    params = {"base_model": str(base), "data": {"train": str(tmp_path / "train.tsv"),
                                                "validation": str(tmp_path / "validation.tsv"), **data}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.json"))
    try:
        prepare.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared")])
    except SystemExit:
        return StageError.from_json((tmp_path / "error.json").read_text())
    return None


def test_max_length_beyond_the_models_positions_is_refused_naming_the_key(tmp_path, monkeypatch):
    record = run_prepare(tmp_path, monkeypatch, write_tiny_base(tmp_path / "base"), max_length=100)
    assert record.kind == "ParamsError" and record.key == "data.max_length"
    assert "100 exceeds the 64 positions of base_model" in record.message and record.fix == "set it to at most 64"
    assert not (tmp_path / "prepared").exists()


def test_a_roberta_base_counts_its_positions_from_the_pad_id(tmp_path, monkeypatch):
    write_hf_checkpoint(tmp_path / "roberta", "roberta", classifier=False)  # a table of 40, positions from 2
    record = run_prepare(tmp_path, monkeypatch, tmp_path / "roberta", max_length=39)
    assert record is not None and record.fix == "set it to at most 38"
    assert run_prepare(tmp_path, monkeypatch, tmp_path / "roberta", max_length=38) is None


def test_the_finetuned_teachers_tokenizer_reads_the_data(tmp_path, monkeypatch):
    """A fine-tuned classifier is taken as it is, so the data must be tokenized as it was trained."""
    from textcompress.stages import prepare

    write_hf_checkpoint(tmp_path / "clf", "bert")
    reversed_ids = {t: i for i, t in enumerate(list(TINY_VOCAB)[:5] + list(TINY_VOCAB)[5:][::-1])}
    build_tiny_tokenizer(reversed_ids).save(str(tmp_path / "clf" / "tokenizer.json"))
    write_tiny_tsv(tmp_path / "train.tsv", tiny_sentiment_rows(20, 1))
    write_tiny_tsv(tmp_path / "validation.tsv", tiny_sentiment_rows(10, 2))
    params = {"base_model": str(write_tiny_base(tmp_path / "base")), "teach": {"finetuned_teacher": str(tmp_path / "clf")},
              "data": {"train": str(tmp_path / "train.tsv"), "validation": str(tmp_path / "validation.tsv"), "max_length": 32}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared")])
    assert (tmp_path / "prepared" / "tokenizer.json").read_bytes() == (tmp_path / "clf" / "tokenizer.json").read_bytes()


def test_a_hugging_face_dataset_without_the_datasets_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:  # not a dependency of textcompress
        pytest.skip("the datasets package is installed here")
    record = run_prepare(tmp_path, monkeypatch, write_tiny_base(tmp_path / "base"), format="hf", max_length=32)
    assert record.kind == "DataError" and "needs the `datasets` package" in record.message
    assert record.fix == "pip install datasets, or export the data to a file"
    assert not (tmp_path / "prepared").exists()


def test_a_headerless_latin_1_file_with_a_bad_row_is_prepared_and_the_skipped_line_logged(tmp_path, monkeypatch, capsys):
    """data.header, data.encoding and data.bad_rows from params.yaml, as a user's own file needs them."""
    from textcompress.stages import prepare

    from textcompress.data import load_split

    train, validation = tmp_path / "train.tsv", tmp_path / "validation.tsv"
    for path, seed in ((train, 1), (validation, 2)):
        lines = [f"{label}\t{text} café" for text, label in tiny_sentiment_rows(20, seed)]
        if path == train:
            lines[4] = "1\t "  # line 5: an empty review
        path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    params = {"base_model": str(write_tiny_base(tmp_path / "base")),
              "data": {"train": str(train), "validation": str(validation), "max_length": 32, "header": False,
                       "text_column": 1, "label_column": 0, "encoding": "latin-1", "bad_rows": "skip"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepare.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "prepared")])
    assert f"skipped 1 bad row (data.bad_rows: skip): {train}:5 (has an empty text)\n" in capsys.readouterr().out
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["train"]["rows"] == 19 and stats["validation"]["rows"] == 20 and stats["skipped_rows"]["count"] == 1
    assert all(text.endswith(" café") for text in load_split(tmp_path / "prepared", "train").texts)


def test_a_bad_value_of_a_data_key_is_refused_naming_the_key_before_anything_is_written(tmp_path, monkeypatch):
    record = run_prepare(tmp_path, monkeypatch, write_tiny_base(tmp_path / "base"), max_length=32, bad_rows="maybe")
    assert record.kind == "ParamsError" and record.key == "data.bad_rows" and record.fix == "use one of error, skip"
    assert not (tmp_path / "prepared").exists()
