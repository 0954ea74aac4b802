"""End to end: the real Prefect flow, DVC with a temporary remote, and MLflow with SQLite,
on a tiny profile (a few hundred rows, a tiny BERT built here). Nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.tiny_project import build_tiny_project

CONTRACT_FIELDS = {"name", "recipe", "families", "accuracy", "macro_f1", "accuracy_drop", "accuracy_ci", "size_mb", "params",
                   "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "peak_rss_mb", "parity_max_abs_diff",
                   "label_agreement", "eligible", "status", "reasons", "details"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_tiny_project(tmp_path_factory.mktemp("e2e"), sections={"attention_benchmark": {"enabled": True}})


@pytest.fixture(scope="module")
def runs(project, prefect_harness):
    from flows.pipeline import pipeline

    cwd = os.getcwd()
    try:
        first = pipeline(project_dir=str(project), pull=True)
        second = pipeline(project_dir=str(project), pull=True)
        scheduled = pipeline(project_dir=str(project), pull=True, skip_unchanged=True)
    finally:
        os.chdir(cwd)
    return first, second, scheduled


@pytest.mark.e2e
def test_first_run_runs_every_stage(runs):
    first, _, _ = runs
    assert first["failed"] == {}
    expected = {"prepare", "teach", "teacher_logits", "benchmark", "attention_benchmark", "report"} | {
        f"{s}@{c}" for s in ("compress", "export", "evaluate") for c in ("teacher", "int8-dynamic", "distill-l2")}
    assert set(first["stages"]) == expected
    assert set(first["stages"].values()) == {"ran"}


@pytest.mark.e2e
def test_candidates_json_has_the_contract(runs, project):
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert report["teacher"] == "teacher" and report["baseline"] == "int8-dynamic"
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "int8-dynamic", "distill-l2"}
    for row in rows.values():
        assert CONTRACT_FIELDS <= set(row), CONTRACT_FIELDS - set(row)
        assert row["status"] == "ok" and 0.0 <= row["accuracy"] <= 1.0
    assert rows["teacher"]["families"] == [] and rows["int8-dynamic"]["families"] == ["quantization"]
    assert rows["distill-l2"]["families"] == ["distillation"]
    assert rows["teacher"]["parity_max_abs_diff"] <= 1e-4
    assert rows["int8-dynamic"]["size_mb"] < rows["teacher"]["size_mb"]
    assert rows["distill-l2"]["params"] < rows["teacher"]["params"]
    # Each drop comes with its paired bootstrap bound (evaluate against this run's teacher); the teacher's is 0.
    assert rows["teacher"]["drop_upper"] == 0.0 and rows["teacher"]["drop_bound_level"] == 0.95
    for name in ("int8-dynamic", "distill-l2"):
        assert rows[name]["drop_upper"] >= rows[name]["accuracy_drop"], name
    assert report["pick"] in {"int8-dynamic", "distill-l2"}
    # The human-readable files say the same: a table row per candidate with its accuracy, the pick
    # named, a real plot, and the promotion decision about that pick.
    table = (project / "reports" / "candidates.md").read_text()
    for name, row in rows.items():
        line = next(l for l in table.splitlines() if l.startswith(f"| {name} |"))
        assert f"{100 * row['accuracy']:.2f}" in line, (name, line)
    assert f"**{report['pick']}**" in table
    assert "## Long inputs: attention kinds against sequence length" in table  # enabled in this project
    from PIL import Image

    with Image.open(project / "reports" / "pareto.png") as plot:
        assert plot.format == "PNG" and min(plot.size) >= 300
    promotion = json.loads((project / "reports" / "promotion.json").read_text())  # the last run's decision
    assert promotion["challenger"] == report["pick"] and promotion == runs[1]["promotion"]
    assert runs[0]["promotion"]["promoted"] is True and runs[0]["promotion"]["challenger"] == report["pick"]


@pytest.mark.e2e
def test_registry_champion_labels_raw_text(runs, project):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("sst2-classifier", "champion")
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert champion.tags["candidate"] == report["pick"]
    assert champion.tags["promotion.decision"] == "promoted"
    model = mlflow.pyfunc.load_model("models:/sst2-classifier@champion")
    out = model.predict(pd.DataFrame({"text": ["the movie was really great .", "the plot was awful ."]}))
    assert list(out["label"]) == [1, 0]
    assert ((out["probability"] > 0.5) & (out["probability"] <= 1.0)).all()
    # The champion's exported folder is a standard one: transformers reads its labels and tokenizer,
    # and ONNX Runtime fed as Optimum feeds it labels the texts as the registered model does.
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    folder = project / "artifacts" / "onnx" / report["pick"]
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["the movie was really great .", "the plot was awful ."], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    assert [config.id2label[int(i)] for i in logits.argmax(-1)] == ["1", "0"]


@pytest.mark.e2e
def test_second_run_reruns_nothing_and_adds_no_versions(runs, project):
    import mlflow

    first, second, _ = runs
    assert set(second["stages"].values()) == {"cached"}
    assert second["versions"] == first["versions"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    versions = mlflow.MlflowClient().search_model_versions("name='sst2-classifier'")
    assert len(versions) == 3
    assert "already the champion" in second["promotion"]["reason"]


@pytest.mark.e2e
def test_artifacts_were_pushed_to_the_users_remote(runs, project):
    first, _, _ = runs
    assert first["push"] == "pushed to tmp (with the run-cache)"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "-c", "-r", "tmp"], cwd=project,
                            capture_output=True, text=True, check=True).stdout
    assert "new:" not in status and "missing:" not in status


@pytest.mark.e2e
def test_changing_one_candidate_invalidates_only_its_stages(runs, project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["candidates"]["distill-l2"][0]["distill"]["epochs"] = 2
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project,
                             capture_output=True, text=True, check=True).stdout
    finally:
        params_file.write_text(original)
    changed = set(json.loads(out))
    # DVC lists the stages whose own params or deps changed; evaluate@distill-l2 follows from its export.
    assert "compress@distill-l2" in changed
    assert changed <= {"compress@distill-l2", "export@distill-l2", "evaluate@distill-l2", "benchmark", "report"}


@pytest.mark.e2e
def test_a_scheduled_run_with_nothing_changed_skips_everything(runs, project):
    _, _, scheduled = runs
    assert scheduled == {"skipped": True, "reason": "nothing changed"}


@pytest.mark.e2e
def test_promotion_and_completion_were_notified(runs, project):
    events = [json.loads(line) for line in (project / "reports" / "notifications.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("completion") == 2  # two full runs; the skipped one sends nothing
    assert kinds.count("promotion") == 1  # only the first run moved the champion
    promotion = next(e for e in events if e["event"] == "promotion")
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert report["pick"] in promotion["subject"]


@pytest.mark.e2e
def test_a_run_of_the_scheduled_deployment_executes_and_skips_when_nothing_changed(runs, project):
    """What `textcompress schedule` does when the cron fires: Prefect creates a run of the
    deployment and executes it from the deployment's entrypoint in its own process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline
    from textcompress.cli import scheduled_deployment
    from textcompress.config import load_params

    options = scheduled_deployment(project, load_params(project / "params.yaml"))
    deployment_id = pipeline.to_deployment(**options).apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "execute", str(flow_run.id)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed() and finished.deployment_id == deployment_id
    assert finished.parameters == {"project_dir": str(project), "pull": True, "skip_unchanged": True}
    assert "nothing to do" in done.stdout + done.stderr  # the run pulled, found nothing changed, and stopped
