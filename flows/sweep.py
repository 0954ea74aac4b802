"""A parallel sweep: candidates trained at once on a Dask (or Ray) cluster, then one pipeline run.

    shared stages in the project -> each candidate's compress/export/evaluate in its own
    workspace, fanned out by the task runner -> the pipeline flow in the project (which finds
    every candidate's outputs in DVC's run-cache) -> one benchmark, report, registry, promotion

Each candidate runs in its own workspace (a copy of the project's files sharing its DVC
cache), so DVC's repository lock is never contended and a crashed candidate cannot touch
another's outputs. The shared cache is how results come back: `dvc repro` in the project
sees that each stage already ran with the same code, data and params, and checks out its
outputs instead of running it again. Workers must see the project's file system and cache
(one machine here; a shared file system in production).

Run: textcompress sweep --workers 2 [--runner dask|ray] [--address tcp://scheduler:8786]
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from prefect import flow, task

from flows.pipeline import pipeline
from tasks.stages import StageFailed, run_dvc_stage, stage_order
from textcompress.config import load_params
from textcompress.errors import TextcompressError
from textcompress.workspace import SWEEPS, make_workspace

WORKSPACES = SWEEPS  # under the project; ignored by git and DVC, and never copied into a workspace


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def candidate_workspace(project: Path, candidate: str) -> Path:
    """A fresh workspace for one candidate (textcompress.workspace: the project's files, its cache)."""
    workspace = project / WORKSPACES / candidate
    if workspace.exists():
        shutil.rmtree(workspace)
    return make_workspace(project, workspace)


def remove_workspace(workspace: Path, tries: int = 3) -> None:
    """Remove a candidate's workspace; again after a moment if it is still there (seen once under Ray:
    a file written into the workspace's .dvc/ while it was being removed kept the folder)."""
    for _ in range(tries):
        shutil.rmtree(workspace, ignore_errors=True)
        if not workspace.exists():
            return
        time.sleep(1.0)


@task(task_run_name="candidate {candidate}")
def train_candidate(project_dir: str, candidate: str, keep_workspace: bool = False, threads: int | None = None) -> dict:
    """compress/export/evaluate of one candidate in its own workspace; upstream shared stages
    come out of the run-cache. A failure is returned, not raised: the others go on."""
    project = Path(project_dir)
    started = time.time()
    workspace = candidate_workspace(project, candidate)
    try:
        for stage in (f"compress@{candidate}", f"export@{candidate}", f"evaluate@{candidate}"):
            run_dvc_stage.fn(stage, str(workspace), upstream=True, threads=threads)
        status = {"candidate": candidate, "status": "ok"}
    except StageFailed as err:
        status = {"candidate": candidate, "status": "failed", "error": str(err),
                  "record": err.record.summary() if err.record else None}
    finally:
        if not keep_workspace:
            remove_workspace(workspace)
    return {**status, "seconds": round(time.time() - started, 1)}


def task_runner(kind: str, workers: int, address: str | None):
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        # Threads are enough: each task waits on a `dvc repro` subprocess that does the work.
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": False})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise TextcompressError("--runner ray needs prefect-ray. Fix: pip install 'textcompress[ray]'") from err
        return RayTaskRunner(address=address) if address else RayTaskRunner(init_kwargs={"num_cpus": workers})
    if kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    raise TextcompressError(f"unknown runner {kind!r}. Fix: use dask, ray or local")


def sweep(project_dir: str = ".", workers: int = 2, runner: str = "dask", address: str | None = None,
          pull: bool = True) -> dict:
    """Fan the candidates out on `runner`, then run the pipeline once over their results."""
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    started = time.time()
    shared = [s.name for s in stage_order(root) if s.candidate is None and s.name.split("@")[0] in
              ("prepare", "teach", "teacher_logits")]
    # Local workers share this machine's cores: each training with all of them oversubscribes the
    # CPU (measured here: two 2-thread trainings on 2 cores ran at about half their combined speed).
    threads = max(1, cores() // workers) if address is None else None

    @flow(name="textcompress-sweep", log_prints=True, task_runner=task_runner(runner, workers, address))
    def fan_out() -> list[dict]:
        for stage in shared:  # once, here, so that workspaces find them in the run-cache
            run_dvc_stage(stage, str(root))
        futures = [train_candidate.submit(str(root), c, threads=threads) for c in params["candidates"]]
        return [f.result() for f in futures]

    if pull:
        from tasks.tracking import pull_data

        pull_data(str(root))
    trained = fan_out()
    fanned = time.time() - started
    summary = pipeline(project_dir=str(root), pull=False)
    summary["sweep"] = {"runner": runner, "workers": workers, "threads_per_worker": threads, "address": address, "candidates": trained,
                        "fan_out_seconds": round(fanned, 1), "seconds": round(time.time() - started, 1)}
    return summary
