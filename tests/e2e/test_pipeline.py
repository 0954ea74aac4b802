"""End to end: the real Prefect flow, DVC with a temporary remote, and MLflow with SQLite,
on a tiny profile (a few hundred rows, a tiny BERT built here). Nothing is mocked."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_VOCAB, build_tiny_tokenizer, tiny_model_config, tiny_sentiment_rows, write_tiny_tsv

REPO = Path(__file__).resolve().parents[2]
CONTRACT_FIELDS = {"name", "recipe", "families", "accuracy", "macro_f1", "accuracy_drop", "accuracy_ci", "size_mb", "params",
                   "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "peak_rss_mb", "parity_max_abs_diff",
                   "label_agreement", "eligible", "status", "reasons", "details"}


def sh(*cmd, cwd):
    subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True)


def write_tiny_base(path: Path) -> Path:
    """A randomly initialised tiny BERT in Hugging Face's layout: config.json, model.safetensors, tokenizer.json."""
    import torch
    from safetensors.torch import save_file

    from textcompress.modeling import TextClassifier

    torch.manual_seed(0)
    config = tiny_model_config()
    model = TextClassifier(config)
    path.mkdir(parents=True)
    weights = {f"bert.{k}": v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    save_file(weights, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(TINY_VOCAB), "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_position_embeddings}))
    build_tiny_tokenizer().save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh git + DVC project holding this repo's pipeline, tiny data pushed to a temporary remote."""
    root = tmp_path_factory.mktemp("e2e")
    project, remote = root / "project", root / "remote"
    project.mkdir()
    for name in ("dvc.yaml",):
        shutil.copy(REPO / name, project / name)
    for package in ("textcompress", "flows", "tasks"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    write_tiny_tsv(project / "data" / "train.tsv", tiny_sentiment_rows(300, 1))
    write_tiny_tsv(project / "data" / "validation.tsv", tiny_sentiment_rows(60, 2))
    base = write_tiny_base(root / "tiny-bert")
    # The defaults, not params.yaml: `make run PARAMS=...` rewrites that file.
    from textcompress.config import DEFAULTS

    params = copy.deepcopy(DEFAULTS)
    params.update(base_model=str(base), seed=0)
    params["data"].update(train="data/train.tsv", validation="data/validation.tsv", max_length=32)
    params["teach"].update(epochs=3, lr=3e-3, batch_size=16)
    params["candidates"] = {  # the three candidates every run has, sized for a 2-layer model
        "teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
        "distill-l2": [{"distill": {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}}]}
    params["benchmark"].update(max_sentences=30, warmup=2)
    params["evaluate"]["bootstrap"] = 100
    params["promotion"]["max_accuracy_drop"] = 5.0  # the tiny task is coarse: one validation row is 1.7 points
    params["pipeline"]["push_remote"] = "tmp"
    params["attention_benchmark"].update(lengths=[16, 64], repeats=1, linformer_length=8, performer_features=8)
    params["notify"].update(events=["failure", "promotion", "completion"], log_file="reports/notifications.jsonl")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    sh("git", "init", "-q", cwd=project)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=project)
    sh(sys.executable, "-m", "dvc", "remote", "add", "-d", "tmp", str(remote), cwd=project)
    sh(sys.executable, "-m", "dvc", "add", "-q", "data", cwd=project)
    sh(sys.executable, "-m", "dvc", "push", "-q", "data.dvc", cwd=project)
    shutil.rmtree(project / "data")  # the flow must bring it back from the remote
    sh(*git, "add", "-A", cwd=project)
    sh(*git, "commit", "-qm", "tiny project", cwd=project)
    return project


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
    assert report["champion"] in {"int8-dynamic", "distill-l2"}
    for name in ("candidates.md", "pareto.png", "promotion.json"):
        assert (project / "reports" / name).is_file()


@pytest.mark.e2e
def test_registry_champion_labels_raw_text(runs, project):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("sst2-classifier", "champion")
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert champion.tags["candidate"] == report["champion"]
    assert champion.tags["promotion.decision"] == "promoted"
    model = mlflow.pyfunc.load_model("models:/sst2-classifier@champion")
    out = model.predict(pd.DataFrame({"text": ["the movie was really great .", "the plot was awful ."]}))
    assert list(out["label"]) == [1, 0]
    assert ((out["probability"] > 0.5) & (out["probability"] <= 1.0)).all()


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
    assert first["push"] == "pushed to tmp"
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
    assert report["champion"] in promotion["subject"]
