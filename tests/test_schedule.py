"""Scheduled retraining: the deployment `textcompress schedule` serves carries the cron schedule
from params and runs the flow with skip_unchanged (the skip itself is in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from textcompress.cli import scheduled_deployment
from textcompress.config import DEFAULTS, load_params
from textcompress.errors import ParamsError


def test_the_deployment_runs_the_pipeline_on_the_cron_schedule_and_skips_when_unchanged(tmp_path):
    from flows.pipeline import pipeline

    params = {**DEFAULTS, "schedule": {"name": "nightly", "cron": "15 2 * * *"}}
    options = scheduled_deployment(tmp_path, params)
    deployment = pipeline.to_deployment(**options)
    assert deployment.name == "nightly"
    assert [s.schedule.cron for s in deployment.schedules] == ["15 2 * * *"]
    assert deployment.parameters == {"project_dir": str(tmp_path), "pull": True, "skip_unchanged": True}
    assert scheduled_deployment(tmp_path, params, cron="0 * * * *")["cron"] == "0 * * * *"


def test_a_bad_cron_is_refused_with_its_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("schedule:\n  cron: every monday\n")
    with pytest.raises(ParamsError, match="schedule.cron"):
        load_params(path)


def test_registering_the_deployment_stores_its_schedule(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    options = scheduled_deployment(tmp_path, {**DEFAULTS, "schedule": {"name": "weekly", "cron": "0 3 * * 1"}})
    deployment_id = pipeline.to_deployment(**options).apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.name == "weekly"
    assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * 1"]
    assert stored.parameters["skip_unchanged"] is True and Path(stored.parameters["project_dir"]) == tmp_path


def test_the_work_pool_deployment_file_runs_the_same_flow_on_the_default_schedule():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[1]
    (deployment,) = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    flow = load_flow_from_entrypoint(str(root / deployment["entrypoint"]))
    assert flow.name == "textcompress-pipeline"
    assert [s["cron"] for s in deployment["schedules"]] == [DEFAULTS["schedule"]["cron"]]
    assert deployment["name"] == DEFAULTS["schedule"]["name"]
    expected = scheduled_deployment(Path("."), DEFAULTS)["parameters"]
    assert deployment["parameters"] == {**expected, "project_dir": "."}
