"""Prefect tasks around MLflow and the DVC remote: log, promote, push. The logic is the library's
(`textcompress.decisions.registry`); these tasks add retries and the flow's view of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
from prefect import task

from tasks.run_cache import READ_ONLY_REMOTES, push_uncached_outputs
from tasks.stages import project_env
from textcompress.catalog import Catalog
from textcompress.errors import TextcompressError
from textcompress.fileio import data_version, read_json
from textcompress.decisions.registry import promote_run, registry_lock, tracking_uri


@task(retries=2, retry_delay_seconds=[2, 10], task_run_name="log candidates to MLflow")
def log_to_mlflow(project_dir: str, params: dict) -> dict[str, str]:
    from textcompress.decisions.registry import log_candidates

    root = Path(project_dir)
    uri = tracking_uri(params["mlflow"]["tracking_uri"], root)
    mlflow.set_tracking_uri(uri)
    report = read_json(Catalog(root).CANDIDATES_JSON)
    with registry_lock(uri):
        return log_candidates(report, Catalog(root).ONNX, Catalog(root).REPORTS, params["promotion"]["registered_model"],
                              params["mlflow"]["experiment"], root, data_version(root), params["data"]["max_length"],
                              pairs=params["data"]["text_pair_column"] is not None)


@task(retries=2, retry_delay_seconds=[2, 10], task_run_name="promote champion")
def promote_champion(project_dir: str, params: dict, versions: dict[str, str]) -> dict:
    """The library's promotion service, as a retried task."""
    return promote_run(project_dir, params, versions)


def _dvc(project_dir: str, *args: str, fix: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, capture_output=True, text=True, env=project_env())
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise TextcompressError(f"`dvc {' '.join(args)}` failed: {last[0]}. Fix: {fix}")


@task(retries=2, retry_delay_seconds=[5, 30], task_run_name="dvc push")
def push_artifacts(project_dir: str, remote: str | None) -> str:
    """Push every stage's outputs and the run-cache (so a teammate's run restores these stages
    instead of running them: tasks.run_cache) to the user's own writable remote, never to the
    shared data remote."""
    if not remote:
        return "skipped: no pipeline.push_remote configured"
    if remote in READ_ONLY_REMOTES:
        return f"skipped: remote {remote!r} is read-only"
    _dvc(project_dir, "push", "--run-cache", "-r", remote,
         fix=f"check `dvc remote list` has {remote!r} and that it is writable")
    push_uncached_outputs(project_dir, remote)  # the metrics the run-cache names, which `dvc push` leaves out
    return f"pushed to {remote} (with the run-cache)"


@task(retries=2, retry_delay_seconds=[5, 30], task_run_name="dvc pull data")
def pull_data(project_dir: str) -> str:
    if not (Path(project_dir) / "data.dvc").is_file():
        return "no data.dvc: using the files named in params.yaml"
    _dvc(project_dir, "pull", "data.dvc", fix="check `dvc remote list` (the default remote holds the data), or run with --no-pull")
    return "pulled"
