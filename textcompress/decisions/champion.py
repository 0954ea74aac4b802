"""The current champion measured in this run, so that promotion compares like with like.

A champion registered by an earlier run (other data or code) is downloaded from its MLflow
model version, evaluated on this run's validation texts through its own tokenizer and label
map, and timed interleaved with this run's teacher; McNemar's test then compares it with this
run's pick on the same validation rows. Pure functions over the project's paths and the model
version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from textcompress.catalog import Catalog
from textcompress.fileio import read_json


def _predictions(root: Path, name: str) -> list | None:
    path = Catalog(root).metrics(name)
    return read_json(path).get("predictions") if path.is_file() else None


def paired_test(root: Path, challenger: str, champion_row: dict) -> dict | None:
    """McNemar's test of the challenger against the champion on this run's validation rows. The
    champion's predictions come from its evaluation in this run, or from measure_champion."""
    from textcompress.data import load_split
    from textcompress.decisions.evaluation import mcnemar_test

    labels = load_split(Catalog(root).PREPARED, "validation").labels
    ours = _predictions(root, challenger)
    theirs = champion_row.get("predictions") or _predictions(root, champion_row["name"])
    if ours is None or theirs is None or len(ours) != len(theirs) or len(ours) != len(labels):
        return None
    return mcnemar_test(np.asarray(ours) == labels, np.asarray(theirs) == labels)


class ChampionNotMeasured(Exception):
    """The current champion could not be evaluated in this run (its artifact is gone or no longer
    loads); promotion keeps it and records this message as the cause."""


def measure_champion(root: Path, params: dict, version) -> dict:
    """Evaluate a champion that is not among this run's candidates on this run's validation texts
    (through its own tokenizer and label map), and time it interleaved with this run's teacher,
    so that its row is comparable with this run's rows (`benchmark_noise`: that timing's verdict).
    Raises ChampionNotMeasured (promotion then keeps the champion and says why) if it cannot be."""
    import mlflow

    from textcompress.deploy.benchmark import benchmark_candidates
    from textcompress.data import load_labels, load_split
    from textcompress.decisions.evaluation import evaluate_predictions
    from textcompress.deploy.inference import OnnxTextClassifier
    from textcompress.deploy.noise import verdict

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=tmp))
            model_dir = local / "artifacts" / "model_dir"
            settings = read_json(model_dir / "serving.json")
            size_mb = sum(p.stat().st_size for p in model_dir.glob("*.onnx")) / 1e6
            validation = load_split(Catalog(root).PREPARED, "validation")
            labels = load_labels(Catalog(root).PREPARED)
            predicted, _ = OnnxTextClassifier(model_dir, max_length=settings["max_length"]).predict(validation.texts)
            index = {label: i for i, label in enumerate(labels)}
            predicted_ids = [index.get(p, -1) for p in predicted]  # a label this data lacks counts as wrong
            # The teacher's predictions on the same rows give the drop's paired bound (promotion.budget_on: bound).
            teacher_file = Catalog(root).metrics("teacher")
            teacher_predictions = read_json(teacher_file).get("predictions") if teacher_file.is_file() else None
            reference = None if teacher_predictions is None else np.asarray(teacher_predictions)
            metrics = evaluate_predictions(np.asarray(predicted_ids), validation.labels, len(labels), reference,
                                           bootstrap=200, bound_level=params["evaluate"]["bound_level"])
            cfg = params["benchmark"]
            measured = benchmark_candidates({"champion": model_dir, "teacher": Catalog(root).onnx("teacher")},
                                            validation.texts[: cfg["max_sentences"] or None], cfg["threads"], cfg["warmup"],
                                            cfg["batch_size"], params["data"]["max_length"], measure_memory=False)
            timing, noise = measured["candidates"], verdict(measured, cfg)
    except Exception as err:  # an unreachable store, an incompatible old model: keep it, say why
        raise ChampionNotMeasured(f"{err.__class__.__name__}: {str(err)[:500]}") from err
    report = read_json(Catalog(root).CANDIDATES_JSON)
    teacher = next(r for r in report["rows"] if r["name"] == "teacher")
    # Timed beside the teacher, then put on this run's scale through the teacher's numbers.
    latency = teacher["latency_p50_ms"] / timing["teacher"]["latency_p50_ms"]
    throughput = teacher["throughput_per_s"] / timing["teacher"]["throughput_per_s"]
    upper = metrics["accuracy_drop_upper"]
    return {"name": "champion", "accuracy": metrics["accuracy"], "accuracy_drop": 100 * (teacher["accuracy"] - metrics["accuracy"]),
            "accuracy_drop_upper": None if upper is None else 100 * upper,
            "latency_p50_ms": timing["champion"]["latency_p50_ms"] * latency,
            "latency_p95_ms": timing["champion"]["latency_p95_ms"] * latency,
            "throughput_per_s": timing["champion"]["throughput_per_s"] * throughput,
            "size_mb": size_mb, "predictions": predicted_ids, "benchmark_noise": noise}
