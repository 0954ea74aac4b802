"""End to end on a 3-class task with string labels: the label map survives every stage, the
registry and serving, which answer with the strings; a quantization-aware candidate goes through
every stage too. Nothing is mocked."""

from __future__ import annotations

import json
import os
import random

import pytest

from tests.e2e.tiny_project import build_tiny_project

WORDS = {"positive": ["great", "fun", "excellent", "loved"], "negative": ["awful", "boring", "terrible", "hated"],
         "neutral": ["music", "ending", "scene", "acting"]}  # neutral: no sentiment word (all in the tiny vocabulary)


def rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng, out = random.Random(seed), []
    for i in range(n):
        label = ("positive", "negative", "neutral")[i % 3]
        topic = rng.choice(["movie", "film", "plot", "story"])
        out.append((f"the {topic} was {rng.choice(['really', 'very', 'so'])} {rng.choice(WORDS[label])} .", label))
    return out


@pytest.mark.e2e
def test_a_three_class_task_with_string_labels_runs_registers_and_serves_its_labels(tmp_path_factory, prefect_harness):
    import mlflow
    import pandas as pd

    from flows.pipeline import pipeline

    project = build_tiny_project(tmp_path_factory.mktemp("e2e-3class"), {
        "teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
        "qat-int8": [{"qat": {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "calibration": 64}}]},
        sections={"promotion": {"registered_model": "tiny-3class", "max_accuracy_drop": 10.0}},
        rows=(rows(300, 1), rows(60, 2)))
    cwd = os.getcwd()
    try:
        result = pipeline(project_dir=str(project), pull=True)
    finally:
        os.chdir(cwd)
    assert result["failed"] == {}
    assert json.loads((project / "artifacts" / "teacher" / "labels.json").read_text()) == ["negative", "neutral", "positive"]
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert {r["name"]: r["status"] for r in report["rows"]} == {"teacher": "ok", "int8-dynamic": "ok", "qat-int8": "ok"}
    assert min(r["accuracy"] for r in report["rows"]) > 0.8  # far above the 1/3 of guessing
    qat_export = json.loads((project / "artifacts" / "onnx" / "qat-int8" / "export.json").read_text())
    assert qat_export["steps"][0]["technique"] == "qat" and qat_export["steps"][0]["details"]["int8_gathers"] == 2
    assert next(r for r in report["rows"] if r["name"] == "qat-int8")["families"] == ["quantization"]

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    versions = mlflow.MlflowClient().search_model_versions("name='tiny-3class'")
    teacher = next(v for v in versions if v.tags["candidate"] == "teacher")
    model = mlflow.pyfunc.load_model(f"models:/tiny-3class/{teacher.version}")
    out = model.predict(pd.DataFrame({"text": ["the movie was really great .", "the plot was so awful .",
                                               "the film was very music ."]}))
    assert list(out["label"]) == ["positive", "negative", "neutral"]
