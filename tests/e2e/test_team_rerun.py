"""A teammate's fresh clone reruns a run someone already pushed without training: the first clone
runs and pushes (outputs and run-cache) to the team's remote; a `git clone` of it, with its own
empty DVC cache and its own MLflow registry (sqlite:///mlflow.db in each clone: a registry is per
clone unless mlflow.tracking_uri names a shared server), restores teach and every compress stage
from the run-cache, gets the same accuracy figures, and makes the same candidate its champion.
Real DVC, Prefect and MLflow; the `textcompress` command in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.tiny_project import build_tiny_project

GIT = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
CANDIDATES = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
              "distill-l2": [{"distill": {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}}]}
# The benchmark runs again in the second clone, so a pick by latency between two fast candidates could
# differ by noise: an agreement gate no quantized model meets leaves distill-l2 the only eligible one.
SECTIONS = {"pipeline": {"push_remote": "team"}, "export": {"agreement_gate": 1.5},
            "promotion": {"registered_model": "tiny-team", "max_accuracy_drop": 10.0}}


def textcompress(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The command as `make run` calls it, on the clone's own code (flows, tasks and the library are
    in the clone; an installed console script would import the checkout it was installed from)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "textcompress.cli", "--project", str(project), *args], cwd=project,
                          capture_output=True, text=True, env=env, timeout=900)


def report(project: Path, name: str) -> dict:
    return json.loads((project / "reports" / name).read_text())


def champion_of(project: Path, model: str) -> str:
    """The candidate behind `model@champion` in the clone's own registry."""
    script = ("import mlflow, sys; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
              "v = mlflow.MlflowClient().get_model_version_by_alias(sys.argv[1], 'champion'); "
              "print(v.tags.get('candidate') or mlflow.get_run(v.run_id).data.tags.get('candidate'))")
    done = subprocess.run([sys.executable, "-c", script, model], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.e2e
def test_a_teammate_s_clone_reruns_a_pushed_run_without_training(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-team")
    first = build_tiny_project(root, candidates=CANDIDATES, sections=SECTIONS)
    # The data stays on the default remote (as on the shared one); runs go to the team's own remote.
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "team", str(root / "team")], cwd=first, check=True)
    subprocess.run([*GIT, "commit", "-qam", "the team's remote"], cwd=first, check=True)

    started = time.time()
    ran = textcompress(first, "run")
    first_seconds = time.time() - started
    assert ran.returncode == 0, ran.stderr[-3000:]
    first_run = report(first, "run.json")
    assert first_run["stages"]["teach"] == "ran" and first_run["push"] == "pushed to team (with the run-cache)"

    second = root / "second"  # dvc.lock and the reports are not committed: only the run-cache knows the run
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)
    assert not (second / ".dvc" / "cache").exists() and not (second / "mlflow.db").exists()
    started = time.time()
    rerun = textcompress(second, "run")
    second_seconds = time.time() - started
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    output = rerun.stdout + rerun.stderr
    second_run = report(second, "run.json")

    trained = ["prepare", "teach", "teacher_logits", *(f"{s}@{c}" for s in ("compress", "export", "evaluate")
                                                       for c in CANDIDATES)]
    assert {stage: second_run["stages"][stage] for stage in trained} == {stage: "cached" for stage in trained}
    assert "Running stage 'teach'" not in output and "Running stage 'compress@distill-l2'" not in output
    assert "Stage 'teach' is cached - skipping run" in output
    # benchmark, attention_benchmark and report declare plain `cache: false` outputs, which DVC's
    # run-cache does not keep: they run again (timing and tables, no training).
    assert second_run["stages"]["report"] == "ran"

    accuracy = {row["name"]: (row["accuracy"], row.get("accuracy_drop")) for row in report(first, "candidates.json")["rows"]}
    assert {row["name"]: (row["accuracy"], row.get("accuracy_drop"))
            for row in report(second, "candidates.json")["rows"]} == accuracy
    assert (second / "artifacts" / "teacher").is_dir()
    for made in sorted(p.relative_to(first) for p in (first / "artifacts" / "teacher").rglob("*") if p.is_file()):
        assert (second / made).read_bytes() == (first / made).read_bytes(), made

    decision = first_run["promotion"]
    assert decision["promoted"] and second_run["promotion"]["promoted"]
    assert second_run["promotion"]["challenger"] == decision["challenger"] == "distill-l2"
    assert champion_of(second, "tiny-team") == champion_of(first, "tiny-team") == "distill-l2"
    print(f"\nfirst clone: {first_seconds:.0f} s; teammate's clone (restored from the run-cache): {second_seconds:.0f} s"
          f"\nstage seconds, first: {first_run['seconds']}\nstage seconds, teammate: {second_run['seconds']}")
