"""The CLI's params handling (a sweep file becomes a complete params.yaml, a bad one changes nothing)
and its errors (one clean line for a user error, the traceback with --debug)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from textcompress.cli import activate_params
from textcompress.config import load_params
from textcompress.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def tracked_sections() -> set[str]:
    """Every params section some stage in dvc.yaml declares (top-level names)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sections = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            sections.add(str(entry).split(".")[0])
    return sections


@pytest.mark.parametrize("sweep", sorted(p.name for p in (REPO / "params").glob("*.yaml")))
def test_every_sweep_file_becomes_a_complete_params_yaml(tmp_path, sweep):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    active = activate_params(REPO / "params" / sweep, tmp_path)
    written = yaml.safe_load(active.read_text())
    assert tracked_sections() <= set(written)
    assert load_params(active) == load_params(REPO / "params" / sweep)


def test_a_bad_sweep_file_leaves_params_yaml_untouched(tmp_path):
    original = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    (tmp_path / "bad.yaml").write_text("teach:\n  epochs: -1\n")
    with pytest.raises(ParamsError, match="teach.epochs"):
        activate_params(tmp_path / "bad.yaml", tmp_path)
    assert (tmp_path / "params.yaml").read_text() == original


def test_a_user_error_prints_one_clean_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from textcompress.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--project", str(tmp_path), "run", "--params", str(tmp_path / "nowhere.yaml")])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {tmp_path / 'nowhere.yaml'}: `(file)`: not found. Fix: run from the "
                                         "project root or pass --params PATH"]


def test_debug_shows_the_traceback_and_tells_the_stages(tmp_path, monkeypatch, capsys):
    from textcompress.cli import main
    from textcompress.errors import DEBUG_ENV

    monkeypatch.setenv(DEBUG_ENV, "")  # restored after the test; main sets it
    with pytest.raises(SystemExit) as exit_:
        main(["--debug", "--project", str(tmp_path), "run", "--params", str(tmp_path / "nowhere.yaml")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and "raise ParamsError" in "\n".join(err)
    assert err[-1].startswith("error: ") and err[-1].endswith("Fix: run from the project root or pass --params PATH")
    assert os.environ[DEBUG_ENV] == "1"


def test_a_user_error_wrapped_by_the_flow_is_still_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import textcompress.cli as cli
    from tasks.stages import StageFailed

    def wrapped(*args):
        try:
            raise StageFailed("stage prepare failed: a.tsv:3: is empty. Fix: add rows")
        except StageFailed as err:
            raise RuntimeError("Flow run encountered an exception") from err

    monkeypatch.setattr(cli, "activate_params", wrapped)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--project", str(tmp_path), "run"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: stage prepare failed: a.tsv:3: is empty. Fix: add rows\n"

    def bug(*args):
        raise KeyError("teach")

    monkeypatch.setattr(cli, "activate_params", bug)
    with pytest.raises(KeyError):
        cli.main(["--project", str(tmp_path), "run"])


def test_prefect_s_console_log_of_a_user_error_keeps_its_line_not_its_traceback():
    import io
    import logging
    import sys

    from tasks.stages import StageFailed
    from textcompress.cli import _NoUserErrorTracebacks

    def record_of(err):
        try:
            raise err
        except Exception:
            return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception during "
                                     "execution: %r", (err,), sys.exc_info())

    user, bug = record_of(StageFailed("stage prepare failed: x")), record_of(KeyError("teach"))
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.addFilter(_NoUserErrorTracebacks())
    handler.handle(user)
    handler.handle(bug)
    lines = console.getvalue().splitlines()
    assert lines[0] == "Encountered exception during execution: StageFailed('stage prepare failed: x')"
    assert lines[1].startswith("Encountered exception during execution: KeyError") and "Traceback" in lines[2]
