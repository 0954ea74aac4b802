"""The tracking tasks never push to the read-only data remote, and push nothing without a remote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.tracking import READ_ONLY_REMOTES, push_artifacts
from textcompress.errors import TextcompressError


@pytest.fixture
def dvc_project(tmp_path):
    """A git + DVC project whose `shared` remote is a folder and whose only output is tracked."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "-q"], cwd=tmp_path, check=True)
    for name in ("shared", "mine"):
        (tmp_path / name).mkdir()
        subprocess.run(dvc + ["remote", "add", name, str(tmp_path / name)], cwd=tmp_path, check=True)
    (tmp_path / "model.txt").write_text("weights")
    subprocess.run(dvc + ["add", "-q", "model.txt"], cwd=tmp_path, check=True)
    return tmp_path


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_shared_remote_is_never_pushed_to(dvc_project):
    assert "shared" in READ_ONLY_REMOTES
    assert push_artifacts.fn(str(dvc_project), "shared") == "skipped: remote 'shared' is read-only"
    assert files_in(dvc_project / "shared") == []


def test_without_a_remote_nothing_is_pushed(dvc_project):
    assert push_artifacts.fn(str(dvc_project), None).startswith("skipped: no pipeline.push_remote")
    assert files_in(dvc_project / "shared") == [] and files_in(dvc_project / "mine") == []


def test_the_user_s_remote_gets_the_outputs(dvc_project):
    assert push_artifacts.fn(str(dvc_project), "mine") == "pushed to mine (with the run-cache)"
    assert len(files_in(dvc_project / "mine")) == 1 and files_in(dvc_project / "shared") == []


def test_an_unknown_remote_is_a_clear_error(dvc_project):
    with pytest.raises(TextcompressError, match="dvc push --run-cache -r nowhere.*Fix: check `dvc remote list` has 'nowhere'"):
        push_artifacts.fn(str(dvc_project), "nowhere")
