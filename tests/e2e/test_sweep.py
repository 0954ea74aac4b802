"""A parallel sweep on a local Dask cluster (2 workers), and on a local Ray cluster: two tiny
candidates trained at once in their own workspaces, their results found by the project's
pipeline run in DVC's run-cache, logged into one registry with one champion."""

from __future__ import annotations

import os

import pytest

from tests.e2e.tiny_project import build_tiny_project

STUDENT = {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}
CANDIDATES = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
              "student-a": [{"distill": {**STUDENT, "layers": [0]}}],
              "student-b": [{"distill": {**STUDENT, "layers": [1]}}]}


@pytest.mark.e2e
@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_a_sweep_trains_candidates_apart_and_promotes_once(tmp_path_factory, prefect_harness, runner):
    import mlflow

    from flows.sweep import WORKSPACES, sweep

    project = build_tiny_project(tmp_path_factory.mktemp(f"sweep-{runner}"), CANDIDATES)
    cwd = os.getcwd()
    try:
        summary = sweep(str(project), workers=2, runner=runner)
    finally:
        os.chdir(cwd)

    from flows.sweep import cores

    assert summary["sweep"]["threads_per_worker"] == max(1, cores() // 2)  # the two workers share the cores
    trained = {c["candidate"]: c["status"] for c in summary["sweep"]["candidates"]}
    assert trained == {name: "ok" for name in CANDIDATES}, summary["sweep"]["candidates"]
    # The project's run found every candidate's stages already done, in the shared run-cache.
    for name in CANDIDATES:
        for stage in ("compress", "export", "evaluate"):
            assert summary["stages"][f"{stage}@{name}"] == "cached", (stage, name)
    assert summary["failed"] == {}
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='sst2-classifier'")
    assert {v.tags["candidate"] for v in versions} == set(CANDIDATES)
    champion = client.get_model_version_by_alias("sst2-classifier", "champion")
    assert champion.tags["candidate"] == summary["promotion"]["challenger"]
    assert not any((project / WORKSPACES).iterdir())  # workspaces are removed after use
