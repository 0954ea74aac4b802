"""End to end with a recurrent teacher: the same Prefect flow, DVC and MLflow run a BiLSTM
teacher and its compressed candidates into their own registered model. Nothing is mocked."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.tiny_project import build_tiny_project

RECOVER = {"epochs": 2, "lr": 3.0e-3, "batch_size": 16}
CANDIDATES = {
    "teacher": [],
    "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
    "prune-units-int8": [{"prune_structured": {"units": 0.5, "round_to": 1, "importance_batches": 4, **RECOVER}},
                         {"quantize": {"mode": "dynamic"}}],
    "low-rank": [{"low_rank": {"modules": "recurrent", "rank": 2, **RECOVER}}],
    "tied-directions": [{"share_layers": {"share": "directions", **RECOVER}}],
}


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, prefect_harness):
    from flows.pipeline import pipeline

    project = build_tiny_project(tmp_path_factory.mktemp("e2e-lstm"), CANDIDATES, sections={
        "teach": {"architecture": "lstm", "epochs": 4, "lr": 1.0e-2,
                  "recurrent": {"bidirectional": True, "layers": 1, "hidden_size": 16, "embedding_size": 0,
                                "pooling": "max", "head_size": 0, "dropout": 0.0, "embeddings": "base"}},
        "promotion": {"registered_model": "tiny-lstm-classifier", "max_accuracy_drop": 10.0},
    })
    cwd = os.getcwd()
    try:
        result = pipeline(project_dir=str(project), pull=True)
    finally:
        os.chdir(cwd)
    return project, result


@pytest.mark.e2e
def test_a_bilstm_teacher_and_its_candidates_run_export_and_register_on_their_own(lstm_run):
    project, result = lstm_run
    assert result["failed"] == {}
    report = json.loads((project / "reports" / "candidates.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == set(CANDIDATES) and all(r["status"] == "ok" for r in rows.values())
    teacher_config = json.loads((project / "artifacts" / "teacher" / "config.json").read_text())
    assert teacher_config["architecture"] == "recurrent" and teacher_config["cell"] == "lstm"
    for name in ("teacher", "low-rank", "tied-directions"):  # fp32 exports match PyTorch
        assert rows[name]["parity_max_abs_diff"] <= 1e-4
    assert rows["prune-units-int8"]["families"] == ["pruning", "quantization"]
    assert rows["tied-directions"]["families"] == ["parameter_sharing"]
    assert rows["low-rank"]["families"] == ["tensor_decomposition"]
    for name in ("prune-units-int8", "low-rank", "tied-directions"):
        assert rows[name]["params"] < rows["teacher"]["params"]
    pruned = json.loads((project / "artifacts" / "compressed" / "prune-units-int8" / "config.json").read_text())
    assert pruned["hidden_size"] == 8

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("tiny-lstm-classifier", "champion")
    assert champion.tags["candidate"] == report["pick"]
    assert client.search_registered_models("name='sst2-classifier'") == []
