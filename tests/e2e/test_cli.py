"""The `textcompress` command as users call it: the console script installed in the environment,
in its own process, on the tiny project (run, predict, promote, rollback, gc, and a bad params
file). Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.tiny_project import build_tiny_project

COMMAND = str(Path(sys.executable).parent / "textcompress")


def textcompress(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([COMMAND, "--project", str(project), *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.e2e
def test_the_console_script_runs_the_pipeline_and_every_command_after_it(tmp_path_factory):
    project = build_tiny_project(tmp_path_factory.mktemp("e2e-cli"),
                                 sections={"promotion": {"registered_model": "tiny-cli", "max_accuracy_drop": 10.0}})
    run = textcompress(project, "run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| candidate |" in run.stdout + run.stderr  # the candidates table, printed at the end

    predicted = textcompress(project, "predict", "--model", "int8-dynamic", "the movie was really great .")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    label, probability, text = predicted.stdout.strip().splitlines()[-1].split("\t")
    assert label in ("0", "1") and 0.5 <= float(probability) <= 1 and text == "the movie was really great ."

    promote = textcompress(project, "promote", "--dry-run")
    assert promote.returncode == 0 and promote.stdout.startswith("would ")

    rollback = textcompress(project, "rollback", "--reason", "a test")
    # One run: either its champion replaced none (refused, with the fix) or nothing was promoted.
    assert rollback.returncode == 2 and "Fix:" in rollback.stderr and "Traceback" not in rollback.stderr

    gc = textcompress(project, "gc", "--keep-versions", "1", "--dry-run")
    assert gc.returncode == 0 and gc.stdout.startswith("tiny-cli: would archive versions")

    bad = textcompress(project, "run", "--params", "nowhere.yaml")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "Fix:" in bad.stderr
