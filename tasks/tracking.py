"""Prefect tasks around MLflow and the DVC remote: log, promote, push."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from prefect import task

from tasks.stages import project_env
from textcompress.errors import TextcompressError
from textcompress.fileio import data_version, read_json, write_json
from textcompress.registry import registry_lock

READ_ONLY_REMOTES = {"shared"}  # the team's data remote: never pushed to


def tracking_uri(uri: str, project_dir: Path) -> str:
    """Relative SQLite paths are relative to the project, wherever the flow was started."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((project_dir / uri[len(prefix):]).resolve())
    return uri


@task(retries=2, retry_delay_seconds=[2, 10], task_run_name="log candidates to MLflow")
def log_to_mlflow(project_dir: str, params: dict) -> dict[str, str]:
    from textcompress.registry import log_candidates

    root = Path(project_dir)
    uri = tracking_uri(params["mlflow"]["tracking_uri"], root)
    mlflow.set_tracking_uri(uri)
    report = read_json(root / "reports" / "candidates.json")
    with registry_lock(uri):
        return log_candidates(report, root / "artifacts" / "onnx", root / "reports", params["promotion"]["registered_model"],
                              params["mlflow"]["experiment"], root, data_version(root), params["data"]["max_length"])


@task(retries=2, retry_delay_seconds=[2, 10], task_run_name="promote champion")
def promote_champion(project_dir: str, params: dict, versions: dict[str, str]) -> dict:
    from textcompress.registry import promote

    root = Path(project_dir)
    uri = tracking_uri(params["mlflow"]["tracking_uri"], root)
    mlflow.set_tracking_uri(uri)
    report = read_json(root / "reports" / "candidates.json")
    with registry_lock(uri):
        decision = promote(report, versions, params["promotion"]["registered_model"], params["promotion"],
                           compare_with_champion=lambda version: measure_champion(root, params, version),
                           paired_test=lambda champion_row: paired_test(root, report["champion"], champion_row))
    write_json(root / "reports" / "promotion.json", decision)
    return decision


def paired_test(root: Path, challenger: str, champion_row: dict) -> dict | None:
    """McNemar's test of the challenger against the champion on this run's validation rows. The
    champion's predictions come from its evaluation in this run, or from measure_champion."""
    from textcompress.data import load_split
    from textcompress.evaluation import mcnemar_test

    def predictions(name: str):
        path = root / "artifacts" / "metrics" / f"{name}.json"
        return read_json(path).get("predictions") if path.is_file() else None

    labels = load_split(root / "artifacts" / "prepared", "validation").labels
    ours = predictions(challenger)
    theirs = champion_row.get("predictions") or predictions(champion_row["name"])
    if ours is None or theirs is None or len(ours) != len(theirs) or len(ours) != len(labels):
        return None
    return mcnemar_test(np.asarray(ours) == labels, np.asarray(theirs) == labels)


def measure_champion(root: Path, params: dict, version) -> dict | None:
    """Evaluate a champion that is not among this run's candidates on this run's validation texts
    (through its own tokenizer and label map), and time it interleaved with this run's teacher,
    so that its row is comparable with this run's rows. None (keep the champion) if it cannot be."""
    from textcompress.benchmark import benchmark_candidates
    from textcompress.data import load_labels, load_split
    from textcompress.evaluation import evaluate_predictions
    from textcompress.inference import OnnxTextClassifier

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=tmp))
            model_dir = local / "artifacts" / "model_dir"
            settings = read_json(model_dir / "serving.json")
            size_mb = sum(p.stat().st_size for p in model_dir.glob("*.onnx")) / 1e6
            validation = load_split(root / "artifacts" / "prepared", "validation")
            labels = load_labels(root / "artifacts" / "prepared")
            predicted, _ = OnnxTextClassifier(model_dir, max_length=settings["max_length"]).predict(validation.texts)
            index = {label: i for i, label in enumerate(labels)}
            predicted_ids = [index.get(p, -1) for p in predicted]  # a label this data lacks counts as wrong
            metrics = evaluate_predictions(np.asarray(predicted_ids), validation.labels, len(labels), bootstrap=200)
            cfg = params["benchmark"]
            timing = benchmark_candidates({"champion": model_dir, "teacher": root / "artifacts" / "onnx" / "teacher"},
                                          validation.texts[: cfg["max_sentences"] or None], cfg["threads"], cfg["warmup"],
                                          cfg["batch_size"], params["data"]["max_length"], measure_memory=False)["candidates"]
    except Exception as err:  # an unreachable store, an incompatible old model: keep it, say why
        print(f"could not measure the current champion in this run ({err.__class__.__name__}: {err}); keeping it")
        return None
    report = read_json(root / "reports" / "candidates.json")
    teacher = next(r for r in report["rows"] if r["name"] == "teacher")
    # Timed beside the teacher, then put on this run's scale through the teacher's numbers.
    latency = teacher["latency_p50_ms"] / timing["teacher"]["latency_p50_ms"]
    throughput = teacher["throughput_per_s"] / timing["teacher"]["throughput_per_s"]
    return {"name": "champion", "accuracy": metrics["accuracy"], "accuracy_drop": 100 * (teacher["accuracy"] - metrics["accuracy"]),
            "latency_p50_ms": timing["champion"]["latency_p50_ms"] * latency,
            "latency_p95_ms": timing["champion"]["latency_p95_ms"] * latency,
            "throughput_per_s": timing["champion"]["throughput_per_s"] * throughput,
            "size_mb": size_mb, "predictions": predicted_ids}


def _dvc(project_dir: str, *args: str, fix: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, capture_output=True, text=True, env=project_env())
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise TextcompressError(f"`dvc {' '.join(args)}` failed: {last[0]}. Fix: {fix}")


@task(retries=2, retry_delay_seconds=[5, 30], task_run_name="dvc push")
def push_artifacts(project_dir: str, remote: str | None) -> str:
    """Push every stage's outputs to the user's own writable remote, never to the shared data remote."""
    if not remote:
        return "skipped: no pipeline.push_remote configured"
    if remote in READ_ONLY_REMOTES:
        return f"skipped: remote {remote!r} is read-only"
    _dvc(project_dir, "push", "-r", remote, fix=f"check `dvc remote list` has {remote!r} and that it is writable")
    return f"pushed to {remote}"


@task(retries=2, retry_delay_seconds=[5, 30], task_run_name="dvc pull data")
def pull_data(project_dir: str) -> str:
    if not (Path(project_dir) / "data.dvc").is_file():
        return "no data.dvc: using the files named in params.yaml"
    _dvc(project_dir, "pull", "data.dvc", fix="check `dvc remote list` (the default remote holds the data), or run with --no-pull")
    return "pulled"
