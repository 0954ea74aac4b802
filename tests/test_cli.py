"""The CLI's params handling (a profile runs in its own workspace, a bad one changes nothing)
and its errors (one clean line for a user error, the traceback with --debug)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from textcompress.config import load_params
from textcompress.errors import ParamsError
from textcompress.workspace import profile_params, run_directory

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
def test_every_profile_is_a_complete_params_file_for_its_own_workspace(tmp_path, sweep):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    where, params = profile_params(REPO / "params" / sweep, tmp_path)
    assert where == tmp_path / "runs" / Path(sweep).stem
    assert tracked_sections() <= set(params)
    expected = load_params(REPO / "params" / sweep)
    assert {k: v for k, v in params.items() if k != "mlflow"} == {k: v for k, v in expected.items() if k != "mlflow"}
    assert params["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # the project's registry


def test_the_project_s_own_params_run_in_the_project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert profile_params("params.yaml", tmp_path) == (tmp_path, load_params(tmp_path / "params.yaml"))


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def small_project(tmp_path):
    """A git and DVC project holding the repository's params, profiles and stage graph."""
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore", "params/quick.yaml"):
        shutil.copy(REPO / name, project / name)
    (project / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / ".gitignore", project / ".dvc" / ".gitignore")
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = false\n['remote \"shared\"']\n    url = ../../storage\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    return project


def test_a_profile_runs_in_its_workspace_and_changes_no_tracked_file(small_project):
    where = run_directory("params/quick.yaml", small_project)
    assert where == small_project / "runs" / "quick"
    assert load_params(where / "params.yaml") == profile_params("params/quick.yaml", small_project)[1]
    assert (where / "dvc.yaml").read_text() == (small_project / "dvc.yaml").read_text()
    assert git(small_project, "status", "--porcelain") == ""  # runs/ is ignored; nothing tracked changed
    # The workspace shares the project's cache, and a relative remote now points where the project's does.
    dvc = [sys.executable, "-m", "dvc"]
    cache = subprocess.run(dvc + ["cache", "dir"], cwd=where, capture_output=True, text=True).stdout.strip()
    assert Path(cache) == small_project / ".dvc" / "cache"
    remote = subprocess.run(dvc + ["remote", "list"], cwd=where, capture_output=True, text=True).stdout
    assert str(small_project.parent / "storage") in remote
    # A second run keeps what the workspace made: its own dvc.lock and reports.
    (where / "dvc.lock").write_text("schema: '2.0'\n")
    assert run_directory("params/quick.yaml", small_project) == where and (where / "dvc.lock").read_text() == "schema: '2.0'\n"


def test_a_bad_profile_makes_and_changes_nothing(small_project):
    original = (small_project / "params.yaml").read_text()
    (small_project / "bad.yaml").write_text("teach:\n  epochs: -1\n")
    with pytest.raises(ParamsError, match="teach.epochs"):
        run_directory(small_project / "bad.yaml", small_project)
    assert (small_project / "params.yaml").read_text() == original and not (small_project / "runs").exists()


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

    monkeypatch.setattr("textcompress.workspace.run_directory", wrapped)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--project", str(tmp_path), "run"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: stage prepare failed: a.tsv:3: is empty. Fix: add rows\n"

    def bug(*args):
        raise KeyError("teach")

    monkeypatch.setattr("textcompress.workspace.run_directory", bug)
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


def test_a_base_model_that_cannot_be_resolved_is_refused_before_prefect_starts(small_project, monkeypatch, capsys):
    import flows.pipeline
    from textcompress.cli import main

    params = yaml.safe_load((small_project / "params.yaml").read_text())
    params["base_model"] = str(small_project / "no-such-model")
    (small_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = []
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kwargs: started.append(kwargs))
    with pytest.raises(SystemExit) as exit_:
        main(["--project", str(small_project), "run", "--no-pull"])
    assert exit_.value.code == 2 and started == []  # the flow (and with it Prefect's server) never started
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: params.yaml `base_model`: model ")
    assert str(small_project / "no-such-model") in error[0] and "Fix: point at a folder written by `save_pretrained`" in error[0]
