"""A run pushed with its run-cache is restored, not rerun, in a teammate's clone; the read-only data
remote is never asked, and a remote that cannot be read fails nothing. Real git and DVC projects."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.run_cache import pull_run_cache, restore_stage
from tasks.stages import project_env, run_dvc_stage
from tasks.tracking import push_artifacts

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def dvc(project: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True, capture_output=True,
                          text=True, env=project_env()).stdout


@pytest.fixture
def first_clone(tmp_path):
    """A project whose one stage trains (here: draws a random number) and logs each execution to
    executions.log beside it, a cached output and a `cache: false` metric as teach has; the data
    remote `shared` is the default, `team` is the writable remote runs are pushed to."""
    project = tmp_path / "first"
    project.mkdir()
    (project / "train.py").write_text(textwrap.dedent(f"""\
        import json, pathlib, random
        pathlib.Path("model").mkdir(exist_ok=True)
        pathlib.Path("model/weights.txt").write_text(str(random.random()))
        pathlib.Path("metrics.json").write_text(json.dumps({{"accuracy": random.random()}}))
        with open({str(tmp_path / "executions.log")!r}, "a") as log:
            log.write("trained\\n")
        """))
    (project / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          teach:
            cmd: python train.py
            deps: [train.py]
            outs: [model]
            metrics:
              - metrics.json:
                  cache: false
        """))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, "init", "-q")
    for name in ("shared", "team"):
        (tmp_path / name).mkdir()
        dvc(project, "remote", "add", *(["-d"] if name == "shared" else []), name, str(tmp_path / name))
    subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", "project"], cwd=project, check=True)  # no dvc.lock: it comes from runs
    return project


def executions(project: Path) -> int:
    log = project.parent / "executions.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_teammate_s_clone_restores_the_pushed_run_instead_of_running_it(first_clone):
    assert run_dvc_stage.fn("teach", str(first_clone)) == "ran" and executions(first_clone) == 1
    assert push_artifacts.fn(str(first_clone), "team").startswith("pushed to team")
    assert list((first_clone.parent / "team").glob("runs/*/*/*")), "the run-cache entry is on the team remote"
    assert not list((first_clone.parent / "shared").rglob("*.*")), "nothing goes to the read-only data remote"

    second = first_clone.parent / "second"
    subprocess.run(["git", "clone", "-q", str(first_clone), str(second)], check=True)
    assert not (second / ".dvc" / "cache").exists() and not (second / "dvc.lock").exists()
    entries, said = pull_run_cache.fn(str(second), "team")
    assert entries == 1 and said == "run-cache: 1 entries from 'team'"
    assert restore_stage(str(second), "teach", "team") == "restored"
    assert run_dvc_stage.fn("teach", str(second)) == "cached"
    assert executions(first_clone) == 1  # the stage's command never ran in the second clone
    for made in ("model/weights.txt", "metrics.json"):
        assert (second / made).read_text() == (first_clone / made).read_text()
    assert "teach" in (second / "dvc.lock").read_text()  # recorded as if it had run here


def test_the_run_cache_alone_restores_nothing_without_the_metrics_it_names(first_clone):
    """Why push_artifacts sends the `cache: false` outputs too: `dvc push --run-cache` leaves them out."""
    run_dvc_stage.fn("teach", str(first_clone))
    dvc(first_clone, "push", "--run-cache", "-r", "team")
    second = first_clone.parent / "second"
    subprocess.run(["git", "clone", "-q", str(first_clone), str(second)], check=True)
    assert pull_run_cache.fn(str(second), "team")[0] == 1
    assert restore_stage(str(second), "teach", "team") == "not in the run-cache"
    assert run_dvc_stage.fn("teach", str(second)) == "ran" and executions(first_clone) == 2


def test_the_read_only_remote_no_remote_and_an_unreadable_one_pull_nothing_and_fail_nothing(first_clone):
    assert pull_run_cache.fn(str(first_clone), "shared") == (0, "run-cache: not pulled (remote 'shared' is the "
                                                                 "read-only data remote)")
    assert pull_run_cache.fn(str(first_clone), None) == (0, "run-cache: not pulled (no pipeline.push_remote configured)")
    entries, said = pull_run_cache.fn(str(first_clone), "nowhere")
    assert entries == 0 and said.startswith("run-cache: not pulled from 'nowhere' (") and said.endswith("as usual")
    assert restore_stage(str(first_clone), "teach", "nowhere").startswith("not ")
