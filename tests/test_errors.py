"""Errors as data: the structured fields of user errors, and the record a failing stage writes."""

from __future__ import annotations

import pickle

import pytest
import yaml

from tests.conftest import tiny_sentiment_rows, write_tiny_tsv
from tests.e2e.tiny_project import write_tiny_base
from textcompress.errors import (
    ERROR_FILE_ENV, DataError, ModelError, ParamsError, PolicyError, RecipeError, StageError, TextcompressError,
)


def test_data_and_params_errors_carry_where_what_and_fix():
    err = DataError("data/train.tsv", "has an empty text", "fill in its text", line=9)
    assert str(err) == "data/train.tsv:9: has an empty text. Fix: fill in its text"
    assert (err.path, err.line, err.problem, err.fix, err.key) == ("data/train.tsv", 9, "has an empty text", "fill in its text", None)
    err = ParamsError("params.yaml", "teach.epochs", "must be ≥ 0, got -1", "set a number of epochs")
    assert str(err) == "params.yaml: `teach.epochs`: must be ≥ 0, got -1. Fix: set a number of epochs"
    assert (err.path, err.key, err.line, err.fix) == ("params.yaml", "teach.epochs", None, "set a number of epochs")


def test_errors_that_replace_value_errors_are_both():
    for err in (ModelError("hidden_size 30 is not divisible by num_heads 4", "pick a multiple"),
                RecipeError("distill", "layers=9 must be between 1 and the teacher's 6", "use 1 to 6"),
                PolicyError("objective 'fastest' is unknown", "use p50_latency_ms", key="promotion.objective")):
        assert isinstance(err, TextcompressError) and isinstance(err, ValueError)
        assert err.fix and str(err).endswith(f". Fix: {err.fix}")
    assert str(RecipeError("distill", "layers=9 is too many")) == "distill: layers=9 is too many"


def test_a_plain_error_s_fix_follows_the_convention_and_survives_pickling():
    err = TextcompressError("nothing to predict. Fix: pass sentences as arguments or --file")
    assert err.fix == "pass sentences as arguments or --file"
    copy = pickle.loads(pickle.dumps(DataError("a.tsv", "is empty", "add rows", 1)))
    assert type(copy) is DataError and (copy.path, copy.line, copy.fix) == ("a.tsv", 1, "add rows")
    assert str(copy) == "a.tsv:1: is empty. Fix: add rows"


def test_a_stage_error_round_trips_through_json():
    record = StageError("prepare", "DataError", "a.tsv:3: is empty. Fix: add rows", ["--out", "x"], "a.tsv", 3, None,
                        "add rows", 2, "Traceback ...")
    assert StageError.from_json(record.to_json()) == record
    assert "traceback" not in record.summary() and record.summary()["line"] == 3


def _params(tmp_path, train_rows):
    write_tiny_tsv(tmp_path / "train.tsv", train_rows)
    write_tiny_tsv(tmp_path / "validation.tsv", tiny_sentiment_rows(10, 2))
    params = {"base_model": str(write_tiny_base(tmp_path / "base")),
              "data": {"train": str(tmp_path / "train.tsv"), "validation": str(tmp_path / "validation.tsv"), "max_length": 32}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def test_a_stage_failing_on_bad_data_writes_a_record_with_file_line_and_fix(tmp_path, monkeypatch, capsys):
    from textcompress.stages import prepare

    rows = tiny_sentiment_rows(20, 1)
    rows[4] = ("", 1)  # data line 6 (after the header)
    params = _params(tmp_path, rows)
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.json"))
    argv = ["--params", str(params), "--out", str(tmp_path / "prepared")]
    with pytest.raises(SystemExit) as exit_:
        prepare.main(argv)
    assert exit_.value.code == 2
    record = StageError.from_json((tmp_path / "error.json").read_text())
    assert (record.stage, record.kind, record.file, record.line) == ("prepare", "DataError", str(tmp_path / "train.tsv"), 6)
    assert record.fix == "remove the row or fill in its text (or set data.bad_rows: skip to drop such rows)" and record.argv == argv and record.exit_code == 2
    assert "has an empty text" in record.message and "raise DataError" in record.traceback
    assert capsys.readouterr().err.strip() == f"error: {record.message}"  # one line on the console, as before
    assert not (tmp_path / "prepared").exists()


def test_an_unexpected_exception_in_a_stage_is_recorded_as_internal_and_exits_1(tmp_path, monkeypatch, capsys):
    from textcompress.stages import prepare

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(prepare, "prepare", broken)
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.json"))
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["--params", str(_params(tmp_path, tiny_sentiment_rows(20, 1))), "--out", str(tmp_path / "p")])
    assert exit_.value.code == 1
    record = StageError.read(tmp_path / "error.json")
    assert record.kind == "internal" and record.exit_code == 1
    assert record.message == "RuntimeError: tokenizer exploded"
    assert "in broken" in record.traceback and "RuntimeError: tokenizer exploded" in record.traceback
    assert "Traceback (most recent call last)" in capsys.readouterr().err  # a bug keeps its traceback


def test_without_the_variable_a_stage_writes_no_record(tmp_path, monkeypatch):
    from textcompress.stages import prepare

    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        prepare.main(["--params", "missing.yaml"])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_user_error_naming_the_file_not_a_bug():
    import errno

    from textcompress.errors import DiskFullError, StageError

    err = DiskFullError.of(OSError(errno.ENOSPC, "No space left on device", "artifacts/onnx/x"))
    record = StageError.from_exception(err, "export")
    assert record.kind == "DiskFullError" and record.file == "artifacts/onnx/x" and record.exit_code == 2
    assert "No space left on device" in record.message and "free disk space" in record.fix
    assert DiskFullError.of(OSError(errno.EACCES, "Permission denied", "x")) is None
    assert DiskFullError.of(ValueError("no")) is None


def test_a_trial_stopped_early_is_recorded_as_stopped_early_with_its_figures():
    from textcompress.errors import StoppedEarly

    err = StoppedEarly(0.6123, 0.8, ["distill", "quantize"])
    record = StageError.from_exception(err, "compress", ["trial"])
    assert record.kind == "stopped_early" and record.exit_code == 2
    assert record.details == {"accuracy": 0.6123, "threshold": 0.8, "steps_not_run": ["distill", "quantize"]}
    assert "0.6123" in record.message and "0.8000" in record.message and "distill, quantize" in record.message
    assert StageError.from_json(record.to_json()) == record
    assert record.summary()["details"] == record.details
    assert pickle.loads(pickle.dumps(err)).details == err.details
    # other errors keep their class name as kind and carry no details
    assert StageError.from_exception(TextcompressError("x. Fix: y"), "compress").details is None
