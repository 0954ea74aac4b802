"""Tests for textcompress.data: reading, validating, tokenizing (prepare) and batching."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import textcompress.data as data_module
from textcompress.config import DEFAULTS
from textcompress.data import length_bucketed_batches, load_labels, load_split, pad_batch, prepare, read_rows
from textcompress.errors import DataError

from tests.conftest import CLS_ID, SEP_ID, TINY_VOCAB

OUTPUT_FILES = {"train.parquet", "validation.parquet", "labels.json", "tokenizer.json", "stats.json"}

TRAIN_TSV = (
    "sentence\tlabel\n"
    "a good movie\t1\n"
    "a bad film\t0\n"
    "great acting and a fun plot\t1\n"
    "boring and awful\t0\n"
)
VALIDATION_TSV = (
    "sentence\tlabel\n"
    "i love this film\t1\n"
    "i hate the plot\t0\n"
)


def data_params(train, validation, test=None, **overrides) -> dict:
    params = copy.deepcopy(DEFAULTS["data"])
    params.update(train=str(train), validation=str(validation), test=None if test is None else str(test))
    params.update(overrides)
    return params


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def tmp_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def assert_data_error(excinfo, path, line=None):
    """The message names the file, and `file:line` where a line is expected."""
    message = str(excinfo.value)
    assert str(path) in message
    assert excinfo.value.path == str(path)
    if line is not None:
        assert f"{path}:{line}:" in message
        assert excinfo.value.line == line


@pytest.fixture
def good_files(write_file):
    return write_file("train.tsv", TRAIN_TSV), write_file("validation.tsv", VALIDATION_TSV)


# ---------------------------------------------------------------------------
# prepare: valid inputs


def test_prepare_valid_tsv_writes_all_outputs(good_files, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation), tiny_tokenizer_file, out)

    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert json.loads((out / "labels.json").read_text()) == [0, 1]
    assert load_labels(out) == [0, 1]
    assert (out / "tokenizer.json").read_bytes() == Path(tiny_tokenizer_file).read_bytes()
    written_stats = json.loads((out / "stats.json").read_text())
    assert written_stats == stats
    assert stats["labels"] == [0, 1]
    assert stats["train"]["rows"] == 4 and stats["validation"]["rows"] == 2
    assert stats["train"]["class_counts"] == {"0": 2, "1": 2}
    assert "test" not in stats and not (out / "test.parquet").exists()
    assert tmp_leftovers(tmp_path) == []


def test_prepare_token_ids_start_with_cls_and_end_with_sep(good_files, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    out = tmp_path / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)

    split = load_split(out, "train")
    assert split.texts == ["a good movie", "a bad film", "great acting and a fun plot", "boring and awful"]
    assert split.labels.tolist() == [1, 0, 1, 0]
    assert split.labels.dtype == np.int64
    for ids in split.input_ids:
        assert ids[0] == CLS_ID and ids[-1] == SEP_ID
    expected_first = [CLS_ID, TINY_VOCAB["a"], TINY_VOCAB["good"], TINY_VOCAB["movie"], SEP_ID]
    assert split.input_ids[0].tolist() == expected_first
    validation_split = load_split(out, "validation")
    assert len(validation_split) == 2
    assert all(ids[0] == CLS_ID for ids in validation_split.input_ids)


def test_prepare_truncates_to_max_length(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\nthe movie was very very very good\t1\nbad\t0\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation, max_length=4), tiny_tokenizer_file, out)

    split = load_split(out, "train")
    assert max(len(ids) for ids in split.input_ids) == 4
    assert split.input_ids[0][0] == CLS_ID and split.input_ids[0][-1] == SEP_ID
    assert stats["train"]["truncated"] == 1
    assert stats["train"]["tokens_max"] == 4


def test_prepare_optional_test_split(good_files, write_file, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    test = write_file("test.tsv", "sentence\tlabel\nfun movie\t1\n")
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation, test=test), tiny_tokenizer_file, out)
    assert (out / "test.parquet").is_file()
    assert stats["test"]["rows"] == 1
    assert load_split(out, "test").labels.tolist() == [1]


def test_prepare_limit_train_keeps_first_rows(good_files, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation, limit_train=2), tiny_tokenizer_file, out)
    assert stats["train"]["rows"] == 2
    assert load_split(out, "train").texts == ["a good movie", "a bad film"]


def test_prepare_string_labels_sorted_and_indexed(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood movie\tpos\nbad movie\tneg\ngreat film\tpos\n")
    validation = write_file("validation.tsv", "sentence\tlabel\nawful plot\tneg\nfun plot\tpos\n")
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation), tiny_tokenizer_file, out)

    assert stats["labels"] == ["neg", "pos"]
    label_map = load_labels(out)
    assert label_map == ["neg", "pos"]
    assert load_split(out, "train").labels.tolist() == [1, 0, 1]
    assert [label_map[i] for i in load_split(out, "validation").labels] == ["neg", "pos"]
    assert stats["train"]["class_counts"] == {"neg": 1, "pos": 2}


def test_prepare_three_string_classes(write_file, tiny_tokenizer_file, tmp_path):
    rows = [("great film", "positive"), ("the plot", "neutral"), ("awful acting", "negative"),
            ("fun movie", "positive"), ("a story", "neutral")]
    train = write_file("train.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    validation = write_file("validation.tsv", "sentence\tlabel\nboring\tnegative\ngood\tpositive\nmusic\tneutral\n")
    out = tmp_path / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)

    label_map = load_labels(out)
    assert label_map == ["negative", "neutral", "positive"]
    train_split = load_split(out, "train")
    assert [label_map[i] for i in train_split.labels] == [l for _, l in rows]
    assert [label_map[i] for i in load_split(out, "validation").labels] == ["negative", "positive", "neutral"]


def test_prepare_int_labels_sort_numerically(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\t10\nbad\t2\nfun\t0\n")
    validation = write_file("validation.tsv", "sentence\tlabel\ngreat\t10\n")
    out = tmp_path / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)
    label_map = load_labels(out)
    assert label_map == [0, 2, 10]
    assert [label_map[i] for i in load_split(out, "train").labels] == [10, 2, 0]


# ---------------------------------------------------------------------------
# Formats: TSV, CSV, JSONL, Parquet read the same rows

ROWS = [("a good movie, really", 1), ("a bad film", 0), ('"great" acting', 1), ("boring, awful, dull", 0)]


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def write_all_formats(directory: Path, rows) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["tsv"] = directory / "rows.tsv"
    paths["tsv"].write_bytes(("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows)).encode())
    paths["csv"] = directory / "rows.csv"
    paths["csv"].write_bytes(("sentence,label\n" + "".join(f"{_csv_field(t)},{l}\n" for t, l in rows)).encode())
    paths["jsonl"] = directory / "rows.jsonl"
    paths["jsonl"].write_bytes("".join(json.dumps({"sentence": t, "label": l}) + "\n" for t, l in rows).encode())
    paths["parquet"] = directory / "rows.parquet"
    pd.DataFrame({"sentence": [t for t, _ in rows], "label": [l for _, l in rows]}).to_parquet(paths["parquet"], index=False)
    return paths


def test_csv_with_quoted_commas_reads_whole_text(tmp_path):
    paths = write_all_formats(tmp_path, ROWS)
    rows = read_rows(paths["csv"], "sentence", "label")
    assert [(text, label) for _, text, label in rows] == [(t, str(l)) for t, l in ROWS]
    assert [line for line, _, _ in rows] == [2, 3, 4, 5]  # line 1 is the header


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_formats_read_the_same_rows_as_tsv(fmt, tmp_path):
    paths = write_all_formats(tmp_path, ROWS)
    expected = [(t, data_module._as_label(l)) for _, t, l in read_rows(paths["tsv"], "sentence", "label")]
    got = [(t, data_module._as_label(l)) for _, t, l in read_rows(paths[fmt], "sentence", "label")]
    assert got == expected == [(t, l) for t, l in ROWS]


def test_jsonl_and_parquet_line_numbers_are_one_based(tmp_path):
    paths = write_all_formats(tmp_path, ROWS)
    assert [line for line, _, _ in read_rows(paths["jsonl"], "sentence", "label")] == [1, 2, 3, 4]
    assert [line for line, _, _ in read_rows(paths["parquet"], "sentence", "label")] == [1, 2, 3, 4]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_prepare_gives_same_output_for_every_format(fmt, tmp_path, tiny_tokenizer_file):
    paths = write_all_formats(tmp_path / "in", ROWS)
    reference, other = tmp_path / "from_tsv", tmp_path / f"from_{fmt}"
    prepare(data_params(paths["tsv"], paths["tsv"]), tiny_tokenizer_file, reference)
    prepare(data_params(paths[fmt], paths[fmt]), tiny_tokenizer_file, other)
    assert load_labels(other) == load_labels(reference) == [0, 1]
    for split in ("train", "validation"):
        a, b = load_split(reference, split), load_split(other, split)
        assert b.texts == a.texts == [t for t, _ in ROWS]
        assert b.labels.tolist() == a.labels.tolist()
        assert [x.tolist() for x in b.input_ids] == [x.tolist() for x in a.input_ids]


def test_explicit_format_overrides_suffix(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(b"sentence,label\n\"good, fun\",1\nbad,0\n")
    assert [(t, l) for _, t, l in read_rows(path, "sentence", "label", fmt="csv")] == [("good, fun", "1"), ("bad", "0")]


def test_unknown_suffix_is_a_data_error(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(b"sentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError) as excinfo:
        read_rows(path, "sentence", "label")
    assert_data_error(excinfo, path)


def test_tsv_keeps_quotes_as_text(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_bytes(b'sentence\tlabel\n"good" movie\t1\nit\'s "bad\t0\n')
    assert [t for _, t, _ in read_rows(path, "sentence", "label")] == ['"good" movie', 'it\'s "bad']


def test_bom_and_crlf_are_accepted(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "\ufeffsentence\tlabel\r\ngood movie\t1\r\nbad film\t0\r\n")
    validation = write_file("validation.tsv", "\ufeffsentence\tlabel\r\nfun plot\t1\r\n\r\nawful plot\t0\r\n")
    out = tmp_path / "prepared"
    stats = prepare(data_params(train, validation), tiny_tokenizer_file, out)
    assert stats["labels"] == [0, 1]
    train_split = load_split(out, "train")
    assert train_split.texts == ["good movie", "bad film"]  # no BOM, no stray \r
    assert train_split.labels.tolist() == [1, 0]
    assert load_split(out, "validation").texts == ["fun plot", "awful plot"]
    # line numbers still count CRLF lines once
    assert [line for line, _, _ in read_rows(validation, "sentence", "label")] == [2, 4]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bom_and_crlf_are_accepted_in_csv_and_jsonl(fmt, write_file):
    if fmt == "csv":
        path = write_file("rows.csv", "\ufeffsentence,label\r\n\"good, fun\",1\r\nbad,0\r\n")
    else:
        path = write_file("rows.jsonl", '\ufeff{"sentence": "good, fun", "label": 1}\r\n{"sentence": "bad", "label": 0}\r\n')
    rows = read_rows(path, "sentence", "label")
    assert [(t, data_module._as_label(l)) for _, t, l in rows] == [("good, fun", 1), ("bad", 0)]


def test_jsonl_text_with_unicode_line_separator_is_one_row(write_file):
    content = json.dumps({"sentence": "good\u2028movie", "label": 1}, ensure_ascii=False) + "\n"
    content += json.dumps({"sentence": "bad", "label": 0}) + "\n"
    path = write_file("rows.jsonl", content)
    rows = read_rows(path, "sentence", "label")
    assert [(line, t) for line, t, _ in rows] == [(1, "good\u2028movie"), (2, "bad")]


# ---------------------------------------------------------------------------
# Bad inputs: DataError naming the file and the line


def test_missing_column_names_file_and_line_1(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "text\tlabel\ngood\t1\nbad\t0\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="sentence") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 1)


def test_missing_label_column_in_validation(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV)
    validation = write_file("validation.tsv", "sentence\tclass\ngood\t1\n")
    with pytest.raises(DataError, match="label") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, validation, 1)


def test_missing_column_in_parquet_names_file(tmp_path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["good"], "label": [1]}).to_parquet(path)
    with pytest.raises(DataError, match="sentence") as excinfo:
        read_rows(path, "sentence", "label")
    assert_data_error(excinfo, path)


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_text_names_its_line(empty, write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", f"sentence\tlabel\ngood\t1\nbad\t0\n{empty}\t1\nfun\t1\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="empty text") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 4)


def test_empty_label_names_its_line(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\t1\nbad\t\nfun\t0\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="no label") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 3)


def test_unseen_validation_label_names_validation_line(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV)
    validation = write_file("validation.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nthe plot\t2\nfun\t1\n")
    with pytest.raises(DataError, match="never occurs in the training data") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, validation, 4)


def test_unseen_string_label_in_validation(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    validation = write_file("validation.tsv", "sentence\tlabel\ngood\tpos\nthe plot\tneutral\n")
    with pytest.raises(DataError, match="neutral") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, validation, 3)


def test_invalid_utf8_names_its_line(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", b"sentence\tlabel\ngood movie\t1\nbad film\t0\nfun \xff\xfe plot\t1\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="UTF-8") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 4)


def test_invalid_utf8_in_validation_with_crlf(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV)
    validation = write_file("validation.tsv", b"sentence\tlabel\r\ngood\t1\r\nbad \xc3\t0\r\n")
    with pytest.raises(DataError, match="UTF-8") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, validation, 3)


def test_one_class_only_names_training_file(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\t1\ngreat\t1\nfun\t1\n")
    validation = write_file("validation.tsv", "sentence\tlabel\nlove it\t1\n")
    with pytest.raises(DataError, match="one class only") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train)


@pytest.mark.parametrize("bad_row", ["good movie\t1\textra", "good movie"])
def test_wrong_number_of_tsv_fields_names_its_line(bad_row, write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", f"sentence\tlabel\ngood\t1\nbad\t0\n{bad_row}\nfun\t1\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="fields where the header has 2") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 4)


def test_mixed_int_and_string_labels_names_its_line(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nfun\tpos\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    with pytest.raises(DataError, match="one kind of label") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 4)


def test_header_only_file_has_no_rows(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV)
    validation = write_file("validation.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match="no rows") as excinfo:
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, validation)


def test_invalid_jsonl_names_its_line(write_file):
    path = write_file("rows.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0\n')
    with pytest.raises(DataError, match="JSON") as excinfo:
        read_rows(path, "sentence", "label")
    assert_data_error(excinfo, path, 2)


def test_jsonl_missing_field_names_its_line(write_file):
    path = write_file("rows.jsonl", '{"sentence": "good", "label": 1}\n\n{"sentence": "bad"}\n')
    with pytest.raises(DataError) as excinfo:
        read_rows(path, "sentence", "label")
    assert_data_error(excinfo, path, 3)


def test_missing_file_is_a_data_error(tmp_path, tiny_tokenizer_file):
    missing = tmp_path / "nope.tsv"
    with pytest.raises(DataError, match="not found") as excinfo:
        prepare(data_params(missing, missing), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, missing)


# ---------------------------------------------------------------------------
# Atomic output


def test_failing_prepare_leaves_no_output(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "sentence\tlabel\ngood\t1\n\t0\n")
    validation = write_file("validation.tsv", VALIDATION_TSV)
    parent = tmp_path / "artifacts"
    parent.mkdir()
    with pytest.raises(DataError):
        prepare(data_params(train, validation), tiny_tokenizer_file, parent / "prepared")
    assert not (parent / "prepared").exists()
    assert list(parent.iterdir()) == []


def test_failing_prepare_keeps_previous_output(good_files, write_file, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    parent = tmp_path / "artifacts"
    out = parent / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)
    before = tree_bytes(out)
    assert set(before) == OUTPUT_FILES

    bad_validation = write_file("bad_validation.tsv", "sentence\tlabel\ngood\t7\n")
    with pytest.raises(DataError):
        prepare(data_params(train, bad_validation), tiny_tokenizer_file, out)
    assert tree_bytes(out) == before
    assert tmp_leftovers(parent) == []
    assert [p.name for p in parent.iterdir()] == ["prepared"]


def test_error_while_writing_keeps_previous_output(good_files, tiny_tokenizer_file, tmp_path, monkeypatch):
    """A failure after some files were written (here: copying the tokenizer) must not leak."""
    train, validation = good_files
    parent = tmp_path / "artifacts"
    out = parent / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)
    before = tree_bytes(out)

    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data_module.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        prepare(data_params(train, validation, max_length=3), tiny_tokenizer_file, out)
    assert tree_bytes(out) == before
    assert tmp_leftovers(parent) == []


def test_successful_prepare_replaces_previous_output(good_files, write_file, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    out = tmp_path / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)
    (out / "stale.txt").write_text("from an older run")
    string_train = write_file("train2.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    string_validation = write_file("validation2.tsv", "sentence\tlabel\nfun\tpos\n")
    prepare(data_params(string_train, string_validation), tiny_tokenizer_file, out)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert load_labels(out) == ["neg", "pos"]
    assert tmp_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# Batching


LENGTHS = [5, 1, 9, 3, 3, 7, 2, 8, 1, 6, 4, 10, 2]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 13, 20])
def test_batches_cover_every_index_exactly_once(shuffle, batch_size):
    batches = length_bucketed_batches(LENGTHS, batch_size, shuffle=shuffle, seed=3)
    flat = np.concatenate(batches).tolist()
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-len(LENGTHS) // batch_size)


def test_unshuffled_batches_are_sorted_by_length():
    batches = length_bucketed_batches(LENGTHS, 4, shuffle=False)
    lengths = [LENGTHS[i] for b in batches for i in b]
    assert lengths == sorted(LENGTHS)
    assert [len(b) for b in batches] == [4, 4, 4, 1]


def test_shuffled_batches_are_deterministic_per_seed_and_sorted_within():
    lengths = np.random.default_rng(0).integers(1, 50, size=500)
    a = length_bucketed_batches(lengths, 8, shuffle=True, seed=7)
    b = length_bucketed_batches(lengths, 8, shuffle=True, seed=7)
    c = length_bucketed_batches(lengths, 8, shuffle=True, seed=8)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    for batch in a:
        assert np.all(np.diff(lengths[batch]) >= 0)


def test_pad_batch_pads_with_zero_and_masks():
    ids, mask = pad_batch([np.array([2, 7, 3]), np.array([2, 3]), np.array([2, 9, 9, 9, 3])])
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.tolist() == [[2, 7, 3, 0, 0], [2, 3, 0, 0, 0], [2, 9, 9, 9, 3]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_pad_batch_custom_pad_id_and_equal_lengths():
    ids, mask = pad_batch([np.array([4, 5]), np.array([6])], pad_id=99)
    assert ids.tolist() == [[4, 5], [6, 99]]
    assert mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = pad_batch([np.array([1, 2]), np.array([3, 4])])
    assert ids.tolist() == [[1, 2], [3, 4]] and mask.tolist() == [[1, 1], [1, 1]]


def test_pad_batch_of_prepared_split(good_files, tiny_tokenizer_file, tmp_path):
    train, validation = good_files
    out = tmp_path / "prepared"
    prepare(data_params(train, validation), tiny_tokenizer_file, out)
    split = load_split(out, "train")
    ids, mask = pad_batch(split.input_ids)
    assert ids.shape == (4, max(len(x) for x in split.input_ids))
    assert mask.sum(dim=1).tolist() == [len(x) for x in split.input_ids]
    assert (ids[mask == 0] == 0).all()
    assert (ids[:, 0] == CLS_ID).all()


def test_selection_split_is_carved_from_training_and_kept_apart(tmp_path, tiny_tokenizer_file):
    from textcompress.config import DEFAULTS
    from textcompress.data import load_split, prepare

    from tests.conftest import tiny_sentiment_rows, write_tiny_tsv

    params = dict(DEFAULTS["data"], train=str(write_tiny_tsv(tmp_path / "train.tsv", tiny_sentiment_rows(200, 1))),
                  validation=str(write_tiny_tsv(tmp_path / "validation.tsv", tiny_sentiment_rows(40, 2))),
                  max_length=32, selection_fraction=0.1, selection_by="row")
    stats = prepare(params, tiny_tokenizer_file, tmp_path / "prepared")
    train, selection = load_split(tmp_path / "prepared", "train"), load_split(tmp_path / "prepared", "selection")
    assert len(selection) == 20 and len(train) == 180 and stats["selection"]["rows"] == 20
    original = [t for t, _ in tiny_sentiment_rows(200, 1)]
    assert sorted(selection.texts + train.texts) == sorted(original)  # every row lands on exactly one side
    again = prepare(params, tiny_tokenizer_file, tmp_path / "again")
    assert load_split(tmp_path / "again", "selection").texts == selection.texts and again == stats  # seeded


# ---------------------------------------------------------------------------
# Sentence pairs, as GLUE ships MRPC: a byte-order mark, unquoted `"` inside sentences

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_TRAIN = MRPC_HEADER + (
    '1\t11\t12\tthe movie was " great " .\tthe film was great .\n'
    "0\t13\t14\tthe plot was dull .\ti loved the music .\n"
    '1\t15\t16\tthe acting was bad .\tthe actors were " terrible " .\n'
    "0\t17\t18\ti hated the ending .\tthe story was fun .\n"
)
MRPC_DEV = MRPC_HEADER + "1\t21\t22\ta good film .\ta nice movie .\n0\t23\t24\tthe music was awful .\tthe ending was great .\n"


def mrpc_params(train, validation, **overrides) -> dict:
    return data_params(train, validation, text_column="#1 String", text_pair_column="#2 String",
                       label_column="Quality", **overrides)


def test_mrpc_as_glue_ships_it_reads_pairs_with_their_quotes(write_file):
    train = write_file("train.tsv", MRPC_TRAIN)
    rows = read_rows(train, "#1 String", "Quality", pair_column="#2 String")
    assert rows[0] == (2, ('the movie was " great " .', "the film was great ."), "1")
    assert [line for line, _, _ in rows] == [2, 3, 4, 5]


def test_prepare_writes_pairs_that_load_back_as_pairs_with_two_segments(write_file, tiny_tokenizer_file, tmp_path):
    train, dev = write_file("train.tsv", MRPC_TRAIN), write_file("dev.tsv", MRPC_DEV)
    stats = prepare(mrpc_params(train, dev), tiny_tokenizer_file, tmp_path / "prepared")
    assert stats["pairs"] is True and data_module.holds_pairs(tmp_path / "prepared")
    split = load_split(tmp_path / "prepared", "validation")
    assert split.texts == [("a good film .", "a nice movie ."), ("the music was awful .", "the ending was great .")]
    ids = split.input_ids[0].tolist()
    assert ids[0] == CLS_ID and ids.count(SEP_ID) == 2 and ids[-1] == SEP_ID
    assert ids.index(SEP_ID) == 5  # [CLS] a good film . [SEP] a nice movie . [SEP]
    assert data_module.pair_separator(tmp_path / "prepared" / "tokenizer.json") == SEP_ID


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_format_reads_the_pair_column(fmt, tmp_path):
    rows = [("a good film .", "a nice movie .", 1), ("dull .", "fun !", 0)]
    frame = pd.DataFrame(rows, columns=["s1", "s2", "label"])
    path = tmp_path / f"rows.{fmt}"
    {"csv": lambda: frame.to_csv(path, index=False), "parquet": lambda: frame.to_parquet(path),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[fmt]()
    assert [(t, int(l)) for _, t, l in read_rows(path, "s1", "label", pair_column="s2")] == [((a, b), l) for a, b, l in rows]


def test_a_missing_pair_column_names_the_file_the_column_and_the_key(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", MRPC_TRAIN)
    dev = write_file("dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\n1\t1\t2\ta good film .\n")
    with pytest.raises(DataError, match=r"has no column '#2 String'.*data.text_pair_column") as excinfo:
        prepare(mrpc_params(train, dev), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, dev, 1)
    assert not (tmp_path / "prepared").exists()


def test_an_empty_second_sentence_names_its_line(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", MRPC_TRAIN.replace("i loved the music .", " "))
    with pytest.raises(DataError, match="has an empty second text of the pair") as excinfo:
        prepare(mrpc_params(train, write_file("dev.tsv", MRPC_DEV)), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 3)


# ---------------------------------------------------------------------------
# A user's own files as they come: no header, another encoding, a few bad rows

AG_NEWS_TSV = (  # AG News as dumped: class, title, description; no header
    "3\tFed raises rates again\tThe US Federal Reserve raised its key interest rate by a quarter point on Tuesday.\n"
    "4\tNew phone ships\tA maker of phones shipped a new model with a larger screen and a faster chip.\n"
    "3\tMarkets slip\tStocks slipped as investors weighed the rate rise against strong earnings reports.\n"
)


def test_a_headerless_tsv_is_read_by_column_positions_from_line_1(write_file):
    path = write_file("train.tsv", AG_NEWS_TSV)
    rows = read_rows(path, 2, 0, header=False)
    assert [line for line, _, _ in rows] == [1, 2, 3]  # the first line is an example, not a header
    assert rows[0] == (1, "The US Federal Reserve raised its key interest rate by a quarter point on Tuesday.", "3")
    assert [label for _, _, label in rows] == ["3", "4", "3"]
    pairs = read_rows(path, 1, 0, pair_column=2, header=False)
    assert pairs[1][1] == ("New phone ships", "A maker of phones shipped a new model with a larger screen and a faster chip.")


def test_prepare_reads_headerless_pairs_by_position(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", "1\ta good film .\ta nice movie .\n0\tdull .\tfun !\n")
    dev = write_file("dev.tsv", "0\tthe plot was awful .\tthe music was great .\n1\tgood .\tgreat .\n")
    params = data_params(train, dev, header=False, text_column=1, text_pair_column=2, label_column=0)
    stats = prepare(params, tiny_tokenizer_file, tmp_path / "prepared")
    assert stats["pairs"] and stats["labels"] == [0, 1]
    split = load_split(tmp_path / "prepared", "validation")
    assert split.texts == [("the plot was awful .", "the music was great ."), ("good .", "great .")]
    assert split.labels.tolist() == [0, 1]


def test_a_position_past_the_last_column_names_the_key(write_file):
    path = write_file("train.tsv", AG_NEWS_TSV)
    with pytest.raises(DataError, match=r"has 3 columns on line 1, so data.label_column: 3 is past the last") as excinfo:
        read_rows(path, 2, 3, header=False)
    assert_data_error(excinfo, path, 1)


def test_a_headerless_file_read_with_a_header_says_its_first_line_looks_like_data(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", AG_NEWS_TSV)
    with pytest.raises(DataError, match="has no column 'sentence'") as excinfo:
        prepare(data_params(train, train), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 1)
    assert "its first line looks like data, not a header" in excinfo.value.problem
    assert "'3' in column 0 looks like a label" in excinfo.value.problem
    assert "column 2 holds 82 characters" in excinfo.value.problem
    assert "set data.header: false" in excinfo.value.fix and "text_column: 2, label_column: 0" in excinfo.value.fix
    assert "The US Federal Reserve raised its key in…" in excinfo.value.problem  # long values shown cut


def test_a_real_header_without_the_column_gets_no_headerless_hint(write_file):
    path = write_file("train.tsv", "text\tlabel\ngood\t1\nbad\t0\n")
    with pytest.raises(DataError, match="has no column 'sentence'") as excinfo:
        read_rows(path, "sentence", "label")
    assert "looks like data" not in str(excinfo.value) and "data.header" not in excinfo.value.fix


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_positions_are_refused_for_formats_that_name_their_columns(fmt, tmp_path):
    paths = write_all_formats(tmp_path, ROWS)
    with pytest.raises(DataError, match=r"cannot be read by column positions \(data.header: false\)") as excinfo:
        read_rows(paths[fmt], 0, 1, header=False)
    assert_data_error(excinfo, paths[fmt])
    assert "data.header: true" in excinfo.value.fix


LATIN_1_ROWS = [("un café très bon", 1), ("un film raté", 0)]


def latin_1_file(directory: Path, fmt: str) -> Path:
    path = directory / f"rows.{fmt}"
    if fmt == "jsonl":
        text = "".join(json.dumps({"sentence": t, "label": l}, ensure_ascii=False) + "\n" for t, l in LATIN_1_ROWS)
    else:
        sep = "\t" if fmt == "tsv" else ","
        text = f"sentence{sep}label\n" + "".join(f"{t}{sep}{l}\n" for t, l in LATIN_1_ROWS)
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_a_latin_1_file_is_refused_as_utf_8_naming_the_encoding_key_and_read_with_it(fmt, tmp_path):
    path = latin_1_file(tmp_path, fmt)
    with pytest.raises(DataError, match=r"is not valid UTF-8 \(byte \d+\)") as excinfo:
        read_rows(path, "sentence", "label")
    assert_data_error(excinfo, path, 2 if fmt != "jsonl" else 1)
    assert "set data.encoding" in excinfo.value.fix
    rows = read_rows(path, "sentence", "label", encoding="latin-1")
    assert [(t, data_module._as_label(l)) for _, t, l in rows] == LATIN_1_ROWS


def test_prepare_reads_latin_1_with_data_encoding(tmp_path, tiny_tokenizer_file):
    path = latin_1_file(tmp_path, "tsv")
    prepare(data_params(path, path, encoding="latin-1"), tiny_tokenizer_file, tmp_path / "prepared")
    assert load_split(tmp_path / "prepared", "train").texts == [t for t, _ in LATIN_1_ROWS]


def test_a_file_invalid_in_the_encoding_it_is_given_names_that_encoding(write_file):
    path = write_file("rows.tsv", b"sentence\tlabel\ngood \x81 movie\t1\n")  # 0x81 is unassigned in cp1252
    with pytest.raises(DataError, match=r"is not valid cp1252 \(byte 20\)") as excinfo:
        read_rows(path, "sentence", "label", encoding="cp1252")
    assert_data_error(excinfo, path, 2)


BAD_ROWS_TRAIN = (
    "sentence\tlabel\n"
    "a good movie\t1\n"
    "\t0\n"                        # line 3: an empty text
    "a bad film\t0\n"
    "great acting\t\n"             # line 5: no label
    "fun plot\t1\textra\n"         # line 6: a field too many
    "boring and awful\t0\n"
)
BAD_ROWS_VALIDATION = "sentence\tlabel\ni love this film\t1\nthe plot\t2\ni hate the plot\t0\n"  # line 3: label unseen


def test_bad_rows_stop_prepare_by_default_and_the_fix_offers_skip(write_file, tiny_tokenizer_file, tmp_path):
    train, validation = write_file("train.tsv", BAD_ROWS_TRAIN), write_file("validation.tsv", BAD_ROWS_VALIDATION)
    with pytest.raises(DataError, match="fields where the header has 2") as excinfo:  # the reader meets it first
        prepare(data_params(train, validation), tiny_tokenizer_file, tmp_path / "prepared")
    assert_data_error(excinfo, train, 6)
    assert "set data.bad_rows: skip" in excinfo.value.fix
    assert not (tmp_path / "prepared").exists()


def test_skipping_bad_rows_drops_them_and_lists_file_and_line(write_file, tiny_tokenizer_file, tmp_path):
    train, validation = write_file("train.tsv", BAD_ROWS_TRAIN), write_file("validation.tsv", BAD_ROWS_VALIDATION)
    stats = prepare(data_params(train, validation, bad_rows="skip"), tiny_tokenizer_file, tmp_path / "prepared")
    assert load_split(tmp_path / "prepared", "train").texts == ["a good movie", "a bad film", "boring and awful"]
    assert load_split(tmp_path / "prepared", "validation").texts == ["i love this film", "i hate the plot"]
    assert stats["train"]["rows"] == 3 and stats["validation"]["rows"] == 2
    skipped = stats["skipped_rows"]
    assert skipped["count"] == 4 and skipped["not_listed"] == 0
    assert skipped["lines"] == [f"{train}:3 (has an empty text)", f"{train}:5 (has no label)",
                                f"{train}:6 (has 3 fields where the header has 2)",
                                f"{validation}:3 (label '2' never occurs in the training data ({train}))"]
    assert json.loads((tmp_path / "prepared" / "stats.json").read_text())["skipped_rows"] == skipped


def test_skipping_bad_sentence_pairs(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", MRPC_TRAIN.replace("i loved the music .", " "))
    dev = write_file("dev.tsv", MRPC_DEV)
    stats = prepare(mrpc_params(train, dev, bad_rows="skip"), tiny_tokenizer_file, tmp_path / "prepared")
    assert stats["skipped_rows"]["lines"] == [f"{train}:3 (has an empty second text of the pair)"]
    assert stats["train"]["rows"] == len(MRPC_TRAIN.splitlines()) - 2  # the header and the bad pair


def test_the_list_of_skipped_lines_is_capped_and_the_rest_counted(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV + "\t1\n" * 25)
    stats = prepare(data_params(train, write_file("validation.tsv", VALIDATION_TSV), bad_rows="skip"),
                    tiny_tokenizer_file, tmp_path / "prepared")
    skipped = stats["skipped_rows"]
    assert skipped["count"] == 25 and skipped["not_listed"] == 5 and len(skipped["lines"]) == data_module.SKIPPED_SHOWN
    assert skipped["lines"][0] == f"{train}:6 (has an empty text)"


def test_skipping_drops_the_rarer_kind_of_label_such_as_a_repeated_header(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV + "sentence\tlabel\n" + TRAIN_TSV.split("\n", 1)[1])  # two files concatenated
    stats = prepare(data_params(train, write_file("validation.tsv", VALIDATION_TSV), bad_rows="skip"),
                    tiny_tokenizer_file, tmp_path / "prepared")
    assert stats["labels"] == [0, 1] and stats["train"]["rows"] == 8
    assert stats["skipped_rows"]["lines"] == [f"{train}:6 (label 'label' is str where the other labels are int)"]


def test_skipping_an_invalid_jsonl_line(write_file):
    path = write_file("rows.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0\n{"sentence": "ok"}\n')
    bad_rows = data_module.BadRows("skip")
    rows = read_rows(path, "sentence", "label", bad_rows=bad_rows)
    assert [(line, t) for line, t, _ in rows] == [(1, "good")]
    assert [(line, problem.split(" (")[0]) for _, line, problem in bad_rows.skipped] == [(2, "is not valid JSON"),
                                                                                          (3, "lacks one of 'sentence', 'label'")]


def test_a_file_of_bad_rows_only_says_so_even_when_skipping(write_file, tiny_tokenizer_file, tmp_path):
    validation = write_file("validation.tsv", "sentence\tlabel\n\t1\n \t0\n")
    with pytest.raises(DataError, match=r"has no usable rows: all 2 were bad rows \(line 2: has an empty text\)") as excinfo:
        prepare(data_params(write_file("train.tsv", TRAIN_TSV), validation, bad_rows="skip"), tiny_tokenizer_file,
                tmp_path / "prepared")
    assert_data_error(excinfo, validation)
    assert not (tmp_path / "prepared").exists()


def test_bad_rows_past_limit_train_are_not_counted(write_file, tiny_tokenizer_file, tmp_path):
    train = write_file("train.tsv", TRAIN_TSV + "fun\t1\textra\n")
    stats = prepare(data_params(train, write_file("validation.tsv", VALIDATION_TSV), bad_rows="skip", limit_train=4),
                    tiny_tokenizer_file, tmp_path / "prepared")
    assert stats["train"]["rows"] == 4 and stats["skipped_rows"]["count"] == 0


def sst2_like_rows() -> list[tuple[str, int]]:
    """Whole sentences and phrases cut from them, as SST-2's training rows are, shuffled; no two
    sentences share a word, so a phrase has exactly one source."""
    import random

    rows = []
    for i in range(40):
        words = [f"w{i}x{k}" for k in range(8)]
        label = i % 2
        rows.append((" ".join(words), label))
        rows += [(" ".join(words[a:b]), label) for a, b in ((0, 3), (2, 6), (5, 8), (4, 5))]
    rows.append((" ".join(f"w0x{k}" for k in range(8)), 0))  # a repeated sentence goes with its first copy
    random.Random(3).shuffle(rows)
    return rows


def test_source_sentences_finds_the_longest_row_holding_each_phrase():
    from textcompress.data import source_sentences

    texts = ["the film is good", "film is", "is good", "good", "the film", "a bad plot", "bad", "film is good",
             "the film is good", "goodness"]
    sentence_of = source_sentences(texts)
    assert [texts[i] for i in sentence_of] == ["the film is good"] * 5 + ["a bad plot"] * 2 + ["the film is good"] * 2 + ["goodness"]
    assert sentence_of[8] == sentence_of[0]  # a repeat joins its first copy
    assert source_sentences([("a", "b"), ("a", "b c"), ("a", "b")]) == [0, 1, 0]  # pairs: only repeats join


def test_selection_by_sentence_holds_out_whole_sentences_and_every_phrase_of_them(tmp_path, tiny_tokenizer_file):
    from textcompress.config import DEFAULTS
    from textcompress.data import load_split, prepare

    from tests.conftest import write_tiny_tsv

    rows = sst2_like_rows()
    params = dict(DEFAULTS["data"], train=str(write_tiny_tsv(tmp_path / "train.tsv", rows)),
                  validation=str(write_tiny_tsv(tmp_path / "validation.tsv", rows[:10])), max_length=32,
                  selection_fraction=0.1)
    assert params["selection_by"] == "sentence"  # the default
    stats = prepare(params, tiny_tokenizer_file, tmp_path / "prepared")
    train, selection = load_split(tmp_path / "prepared", "train"), load_split(tmp_path / "prepared", "selection")
    assert selection.texts and all(len(text.split()) == 8 for text in selection.texts)  # sentences, not phrases
    held_out = {word for text in selection.texts for word in text.split()}
    assert not any(set(text.split()) & held_out for text in train.texts)  # no phrase of them left in training
    removed = len(rows) - len(train)
    assert round(0.1 * len(rows)) <= removed < round(0.1 * len(rows)) + 6 and len(selection) == len(set(selection.texts)) == stats["selection"]["rows"]
    assert removed == sum(6 if text == " ".join(f"w0x{k}" for k in range(8)) else 5 for text in selection.texts)
    again = prepare(params, tiny_tokenizer_file, tmp_path / "again")
    assert load_split(tmp_path / "again", "selection").texts == selection.texts and again == stats  # seeded
