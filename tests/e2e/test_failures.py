"""End to end when a candidate fails for real: the run goes on without it and says why. The tiny
project's teacher has 2 layers, so a `layer_map` naming layer 5 passes params validation (which
cannot know the teacher's depth) and raises inside `compress`. Nothing is mocked."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.tiny_project import build_tiny_project

BROKEN = [{"distill": {"student": "bert", "layers": 1, "layer_map": [5], "epochs": 1}}]


@pytest.mark.e2e
def test_a_failed_candidate_is_reported_its_outputs_removed_and_the_others_promoted(tmp_path_factory, prefect_harness):
    import mlflow

    from flows.pipeline import pipeline

    project = build_tiny_project(tmp_path_factory.mktemp("e2e-failure"), {
        "teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
        "distill-l1": [{"distill": {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}}],
        "broken": BROKEN},
        sections={"promotion": {"registered_model": "tiny-failure", "max_accuracy_drop": 10.0}})
    stale = project / "artifacts" / "onnx" / "broken"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"from an older run")  # must not be benchmarked or registered
    cwd = os.getcwd()
    try:
        result = pipeline(project_dir=str(project), pull=True)
    finally:
        os.chdir(cwd)

    # The failed stage, the stages after it skipped, the reason as the stage gave it.
    assert result["stages"]["compress@broken"] == "failed"
    assert result["stages"]["export@broken"] == result["stages"]["evaluate@broken"] == "skipped"
    assert "layer_map [5] must name a teacher layer" in result["failed"]["broken"]
    assert result["errors"]["broken"]["stage"] == "compress" and result["errors"]["broken"]["kind"] == "RecipeError"
    assert not stale.exists()
    # The report marks the row failed with the same reason; the others are measured and promoted as usual.
    failures = json.loads((project / "reports" / "failures.json").read_text())
    assert failures == {"broken": result["failed"]["broken"]}
    rows = {r["name"]: r for r in json.loads((project / "reports" / "candidates.json").read_text())["rows"]}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["reasons"] == [result["failed"]["broken"]]
    assert rows["distill-l1"]["status"] == rows["int8-dynamic"]["status"] == "ok"
    assert "broken" not in result["versions"] and {"teacher", "int8-dynamic", "distill-l1"} <= set(result["versions"])
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    tagged = {v.tags["candidate"] for v in mlflow.MlflowClient().search_model_versions("name='tiny-failure'")}
    assert "broken" not in tagged
    assert result["promotion"]["challenger"] in {"int8-dynamic", "distill-l1"}
    notes = [json.loads(line) for line in (project / "reports" / "notifications.jsonl").read_text().splitlines()]
    completion = next(n for n in notes if n["event"] == "completion")
    assert "failed candidates: ['broken']" in completion["body"]
