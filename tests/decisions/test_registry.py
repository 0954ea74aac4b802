"""MLflow registry: versions are not duplicated, the champion alias moves only when the policy
says so, and a champion from an earlier run is measured in this run before it is replaced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import export_model_dir
from textcompress.decisions.champion import measure_champion
from textcompress.decisions.evaluation import paired_drop_bound
from textcompress.config import DEFAULTS
from textcompress.data import load_split
from textcompress.fileio import read_json, write_json
from textcompress.deploy.inference import OnnxTextClassifier
from textcompress.models.encoder import load_bundle
from textcompress.errors import TextcompressError
from textcompress.decisions.promotion import PromotionPolicy
from textcompress.decisions.registry import (ARCHIVED_TAG, CHALLENGER, CHAMPION, DEMOTED_TAG, archive_old_versions, decide,
                                   log_candidates, promote, promote_run, rollback)
from textcompress.techniques.pruning import student_from_teacher

MODEL = "test-classifier"
PROMOTION_PARAMS = {"registered_model": MODEL, "max_accuracy_drop": 5.0, "objective": "latency_p50_ms"}
POLICY = PromotionPolicy.from_params(PROMOTION_PARAMS)


def row(name: str, accuracy: float, p50: float, eligible: bool = True) -> dict:
    return {"name": name, "recipe": [], "families": [], "status": "ok", "reasons": [] if eligible else ["x"],
            "eligible": eligible, "accuracy": accuracy, "accuracy_drop": 100 * (1.0 - accuracy), "latency_p50_ms": p50,
            "latency_p95_ms": p50, "throughput_per_s": 1000 / p50, "size_mb": 0.1}


@pytest.fixture
def project(tmp_path, tiny_teacher, tiny_prepared) -> Path:
    """A project directory with the tiny teacher and a 1-layer student exported, and MLflow in SQLite."""
    root = tmp_path / "project"
    shutil.copytree(tiny_prepared, root / "artifacts" / "prepared")
    teacher, labels = load_bundle(tiny_teacher)
    for name, model in (("teacher", teacher), ("student", student_from_teacher(teacher, [0]))):
        export_model_dir(model, tiny_teacher, root / "artifacts" / "onnx" / name)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "mlartifacts").as_uri())
    (root / "reports").mkdir()
    return root


def log(project: Path, rows: list[dict], pick: str | None) -> tuple[dict, dict]:
    report = {"pick": pick, "rows": rows}
    write_json(project / "reports" / "candidates.json", report)
    versions = log_candidates(report, project / "artifacts" / "onnx", project / "reports", MODEL, "registry-test",
                              project, data_version="v1", max_length=32)
    return report, versions


def test_a_rerun_with_nothing_changed_adds_no_versions(project):
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    _, first = log(project, rows, "student")
    _, second = log(project, rows, "student")
    assert first == second
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")) == 2


def test_the_registered_model_pins_the_versions_it_was_logged_with(project):
    from importlib.metadata import version

    _, versions = log(project, [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)], "student")
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{MODEL}/{versions['student']}")).read_text()
    for name in ("onnxruntime", "tokenizers", "pandas", "numpy", "mlflow"):
        assert f"{name}=={version(name)}" in requirements.splitlines()
    # The plain exported folder travels with it: config, tokenizer and ONNX file.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{versions['student']}"))
    assert {"model.onnx", "tokenizer.json", "labels.json"} <= {p.name for p in (local / "artifacts" / "model_dir").iterdir()}


def test_no_eligible_candidate_never_moves_the_alias(project):
    report, versions = log(project, [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)], "student")
    promote(report, versions, MODEL, POLICY)
    before = mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version
    report["pick"] = None
    decision = promote(report, versions, MODEL, POLICY)
    assert not decision["promoted"] and "no candidate is eligible" in decision["reason"]
    assert mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version == before


def test_a_slower_challenger_does_not_replace_the_champion_of_this_run(project):
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    report, versions = log(project, rows, "student")
    promote(report, versions, MODEL, POLICY)
    # The teacher's row made eligible and picked: slower than the champion measured in this run.
    report["rows"][0].update(eligible=True, reasons=[])
    report["pick"] = "teacher"
    decision = promote(report, versions, MODEL, POLICY)
    assert not decision["promoted"] and "does not beat" in decision["reason"]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]
    assert client.get_model_version(MODEL, versions["teacher"]).tags["promotion.decision"] == "not promoted"


def test_a_champion_from_an_earlier_run_is_measured_in_this_run(project, tiny_prepared):
    # Run 1 registers the student as champion.
    report, old_versions = log(project, [row("student", 1.0, 1.0)], "student")
    promote(report, old_versions, MODEL, POLICY)
    old = mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION)
    # The champion's own accuracy, computed directly through its tokenizer.
    validation = load_split(tiny_prepared, "validation")
    labels, _ = OnnxTextClassifier(project / "artifacts" / "onnx" / "student", max_length=32).predict(validation.texts)
    expected_accuracy = sum(int(l) == y for l, y in zip(labels, validation.labels)) / len(validation)

    # Run 2 has other data, so none of its versions is the champion: it must be downloaded and measured.
    params = {**DEFAULTS, "benchmark": {**DEFAULTS["benchmark"], "max_sentences": 20, "warmup": 1},
              "data": {**DEFAULTS["data"], "max_length": 32}}
    rows = [row("teacher", 1.0, 2.0, eligible=False)]
    write_json(project / "reports" / "candidates.json", {"pick": None, "rows": rows})
    # This run's teacher's predictions (wrong on every third row): the champion's drop bound pairs its rows with them.
    teacher_predictions = [1 - y if i % 3 == 0 else y for i, y in enumerate(validation.labels.tolist())]
    write_json(project / "artifacts" / "metrics" / "teacher.json", {"predictions": teacher_predictions})
    measured = measure_champion(project, params, old)
    assert measured is not None
    assert measured["accuracy"] == pytest.approx(expected_accuracy)
    champion_correct = np.array([int(l) == y for l, y in zip(labels, validation.labels)])
    teacher_correct = np.array(teacher_predictions) == validation.labels
    expected_bound = paired_drop_bound(champion_correct, teacher_correct, samples=200, level=params["evaluate"]["bound_level"])
    assert measured["accuracy_drop_upper"] == pytest.approx(100 * expected_bound)
    assert measured["latency_p50_ms"] > 0 and measured["size_mb"] > 0
    assert isinstance(measured["benchmark_noise"]["noisy"], bool)  # that timing is judged like the stage's


def test_dry_run_decides_without_touching_the_registry(project):
    report, versions = log(project, [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)], "student")
    decision = decide(report, versions, MODEL, POLICY)
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    client = mlflow.MlflowClient()
    assert client.get_registered_model(MODEL).aliases == {}
    assert "promotion.decision" not in client.get_model_version(MODEL, versions["student"]).tags


def test_a_pick_chosen_on_the_selection_split_over_budget_on_validation_is_not_promoted(project):
    # Eligible on the selection split, but 10 points below the teacher on validation (budget 5).
    rows = [row("teacher", 1.0, 2.0, eligible=False), {**row("student", 0.9, 1.0), "selection_accuracy_drop": 0.5}]
    report, versions = log(project, rows, "student")
    policy = PromotionPolicy.from_params({**PROMOTION_PARAMS, "select_on": "selection"})
    assert policy.eligibility_reasons(rows[1], {"parity_ok": True}) == []  # the pick is fair on its own split
    decision = promote(report, versions, MODEL, policy)  # no champion yet: only the validation gate stands in the way
    assert not decision["promoted"]
    assert "chosen on the selection split" in decision["reason"] and "10.00 points" in decision["reason"]
    aliases = mlflow.MlflowClient().get_registered_model(MODEL).aliases
    assert CHAMPION not in aliases and str(aliases[CHALLENGER]) == versions["student"]


def project_params(project: Path) -> dict:
    return {**DEFAULTS, "promotion": {**DEFAULTS["promotion"], **PROMOTION_PARAMS},
            "mlflow": {"tracking_uri": mlflow.get_tracking_uri(), "experiment": "registry-test"}}


def test_promote_run_is_the_service_behind_the_flow_and_the_cli(project):
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    _, versions = log(project, rows, "student")
    params = project_params(project)
    preview = promote_run(project, params, versions, dry_run=True)
    assert preview["promoted"] and preview["reason"] == "no champion yet"
    assert mlflow.MlflowClient().get_registered_model(MODEL).aliases == {}
    assert not (project / "reports" / "promotion.json").exists()  # a dry run records nothing

    decision = promote_run(project, params, versions)
    assert decision["promoted"] and decision["challenger"] == "student"
    assert read_json(project / "reports" / "promotion.json") == json.loads(json.dumps(decision))
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]
    assert "already the champion" in promote_run(project, params, versions)["reason"]


def test_the_promote_command_uses_the_library_service_without_prefect_tasks(project):
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    _, versions = log(project, rows, "student")
    params = project_params(project)
    import yaml

    (project / "params.yaml").write_text(yaml.safe_dump({"promotion": PROMOTION_PARAMS, "mlflow": params["mlflow"]}))
    write_json(project / "reports" / "run.json", {"versions": versions})
    script = ("import sys; from textcompress.cli import main; main(['--project', sys.argv[1], 'promote', '--dry-run']); "
              "print('task modules imported:', 'tasks.tracking' in sys.modules or 'tasks.stages' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(project)], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "would make student (version" in done.stdout and "no champion yet" in done.stdout
    assert "task modules imported: False" in done.stdout
    assert mlflow.MlflowClient().get_registered_model(MODEL).aliases == {}


def test_rollback_restores_the_replaced_champion_and_it_is_not_promoted_again(project):
    rows = [row("teacher", 1.0, 2.0), row("student", 1.0, 1.0)]
    report, versions = log(project, rows, "teacher")
    promote(report, versions, MODEL, POLICY)  # teacher first (no champion yet)
    report["pick"] = "student"
    assert promote(report, versions, MODEL, POLICY)["promoted"]  # faster: replaces it
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]

    result = rollback(MODEL, "bad labels in production")
    assert result == {"registered_model": MODEL, "demoted": versions["student"], "champion": versions["teacher"],
                      "reason": "bad labels in production"}
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == versions["teacher"]
    assert client.get_model_version(MODEL, versions["student"]).tags[DEMOTED_TAG] == "bad labels in production"
    # A later scheduled run picks the student again: it is not promoted back.
    decision = promote(report, versions, MODEL, POLICY)
    assert not decision["promoted"] and "rolled back" in decision["reason"]
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == versions["teacher"]


def test_rollback_without_an_earlier_champion_is_a_clear_error(project):
    report, versions = log(project, [row("student", 1.0, 1.0)], "student")
    promote(report, versions, MODEL, POLICY)
    with pytest.raises(TextcompressError, match="nothing to roll back to"):
        rollback(MODEL, "oops")
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]


def test_a_pick_that_loses_becomes_the_challenger_alias(project):
    rows = [row("teacher", 1.0, 2.0), row("student", 1.0, 1.0)]
    report, versions = log(project, rows, "student")
    promote(report, versions, MODEL, POLICY)
    report["pick"] = "teacher"  # slower than the champion
    promote(report, versions, MODEL, POLICY)
    aliases = mlflow.MlflowClient().get_registered_model(MODEL).aliases
    assert str(aliases[CHAMPION]) == versions["student"] and str(aliases[CHALLENGER]) == versions["teacher"]


def test_retention_archives_old_versions_but_never_the_champion_or_its_rollback_target(project):
    rows = [row("teacher", 1.0, 2.0), row("student", 1.0, 1.0)]
    report, versions = log(project, rows, "teacher")
    promote(report, versions, MODEL, POLICY)
    report["pick"] = "student"
    promote(report, versions, MODEL, POLICY)  # student champion; teacher is its rollback target
    for data_version in ("v2", "v3"):  # later runs add versions nobody promotes
        log_candidates(report, project / "artifacts" / "onnx", project / "reports", MODEL, "registry-test", project,
                       data_version=data_version, max_length=32)
    client = mlflow.MlflowClient()
    all_versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert len(all_versions) == 6

    preview = archive_old_versions(MODEL, keep=1, dry_run=True)
    assert not any(v.tags.get(ARCHIVED_TAG) for v in client.search_model_versions(f"name='{MODEL}'"))
    result = archive_old_versions(MODEL, keep=1)
    assert result["archived"] == preview["archived"]
    assert versions["student"] not in result["archived"] and versions["teacher"] not in result["archived"]
    assert result["protected"][versions["student"]] == CHAMPION
    assert result["protected"][versions["teacher"]] == "rollback target"
    assert sorted(int(v) for v in result["archived"]) == [v for v in all_versions[:-1] if str(v) not in versions.values()]
    for v in result["archived"]:
        assert client.get_model_version(MODEL, v).tags[ARCHIVED_TAG] == "true"
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]


CONCURRENT_PIPELINE = """
import json, sys
from pathlib import Path
import mlflow
from textcompress.decisions.promotion import PromotionPolicy
from textcompress.decisions.registry import log_candidates, promote, registry_lock
project, uri, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
mlflow.set_tracking_uri(uri)
report = json.loads(sys.argv[4])
policy = PromotionPolicy.from_params({"registered_model": "test-classifier", "max_accuracy_drop": 5.0, "objective": "latency_p50_ms"})
for attempt in range(5):  # each pipeline logs and promotes several times, as a scheduler would
    with registry_lock(uri):
        versions = log_candidates(report, project / "artifacts" / "onnx", project / "reports", "test-classifier",
                                  "registry-test", project, data_version=f"{name}-{attempt}", max_length=32)
    with registry_lock(uri):
        decision = promote(report, versions, "test-classifier", policy)
    print(json.dumps(decision))
"""


def test_two_pipelines_promoting_at_once_end_with_one_champion_and_every_version(project, tmp_path):
    uri = mlflow.get_tracking_uri()
    repo = Path(__file__).resolve().parents[2]
    children = []
    for name in ("teacher", "student"):
        report = {"pick": name, "rows": [row(name, 1.0, 2.0 if name == "teacher" else 1.0)]}
        children.append(subprocess.Popen([sys.executable, "-c", CONCURRENT_PIPELINE, str(project), uri, name, json.dumps(report)],
                                         cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-2000:]
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 10  # 2 pipelines x 5 runs, each with its own data version: none lost
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert champion.tags["candidate"] in {"teacher", "student"}
    decisions = [json.loads(line) for out, _ in outputs for line in out.strip().splitlines()]
    assert sum(d["reason"] == "no champion yet" for d in decisions) == 1


def test_a_new_experiment_keeps_its_artifacts_beside_the_sqlite_registry(tmp_path, monkeypatch):
    """A profile run creates the experiment from runs/<profile>/; its models must not live there."""
    from mlflow import MlflowClient

    from textcompress.decisions.registry import ensure_experiment

    elsewhere = tmp_path / "runs" / "quick"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    ensure_experiment(client, "textcompress")
    location = client.get_experiment_by_name("textcompress").artifact_location
    assert location == (tmp_path / "mlruns").as_uri()
    ensure_experiment(client, "textcompress")  # an existing one is left as it is
    assert mlflow.get_experiment_by_name("textcompress").artifact_location == location


def test_a_registry_lock_held_too_long_is_a_clear_error_naming_the_lock(tmp_path):
    import fcntl

    from textcompress.decisions.registry import registry_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open(tmp_path / "mlflow.lock", "a") as held:  # another pipeline holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TextcompressError, match=r"mlflow\.lock: another pipeline has held the registry lock.*Fix: wait"):
            with registry_lock(uri, timeout_s=0.5):
                pass
    with registry_lock(uri, timeout_s=0.5):  # released: the next pipeline goes on
        pass


def test_a_pick_whose_version_this_registry_lacks_is_a_clear_error(project):
    """A fresh clone's committed run.json names versions its new mlflow.db does not have."""
    report, versions = log(project, [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)], "student")
    for wrong in ({**versions, "student": "99"}, {}):
        with pytest.raises(TextcompressError, match=r"version (99|None) of .* is not in this registry.*Fix: run the pipeline"):
            decide(report, wrong, MODEL, POLICY)


NOISY = {"noisy": True, "causes": ["other processes used 1.3 of 2 cores during timing"]}


def log_noisy_run(project: Path) -> dict:
    """This run's pick on a benchmark flagged noisy, as the report stage writes candidates.json."""
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    _, versions = log(project, rows, "student")
    write_json(project / "reports" / "candidates.json", {"pick": "student", "rows": rows, "benchmark": {"noise": NOISY}})
    return versions


def noisy_params(project: Path, objective: str = "latency_p50_ms", allow_noisy: bool = False) -> dict:
    params = project_params(project)
    return {**params, "promotion": {**params["promotion"], "objective": objective},
            "benchmark": {**params["benchmark"], "allow_noisy": allow_noisy}}


def test_promotion_on_latency_from_a_noisy_benchmark_is_refused_and_moves_no_alias(project):
    versions = log_noisy_run(project)
    decision = promote_run(project, noisy_params(project), versions)
    assert not decision["promoted"] and decision["noisy_benchmark"]
    assert "benchmark was noisy (other processes used 1.3 of 2 cores" in decision["reason"]
    assert "latency_p50_ms cannot be trusted" in decision["reason"]
    assert "Fix:" in decision["reason"] and "`benchmark.allow_noisy: true`" in decision["reason"]
    client = mlflow.MlflowClient()
    assert client.get_registered_model(MODEL).aliases == {}  # neither champion nor challenger
    assert "promotion.decision" not in client.get_model_version(MODEL, versions["student"]).tags
    assert read_json(project / "reports" / "promotion.json")["reason"] == decision["reason"]


def test_allow_noisy_promotes_on_a_noisy_benchmark(project):
    versions = log_noisy_run(project)
    decision = promote_run(project, noisy_params(project, allow_noisy=True), versions)
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]


def test_a_noisy_benchmark_does_not_block_a_size_objective(project):
    versions = log_noisy_run(project)
    decision = promote_run(project, noisy_params(project, objective="size_mb"), versions)
    assert decision["promoted"] and "noisy_benchmark" not in decision
    assert str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version) == versions["student"]


def test_a_champion_timed_again_on_a_busy_machine_is_not_replaced_on_that_timing(project):
    report, first = log(project, [row("student", 1.0, 1.0)], "student")
    promote(report, first, MODEL, POLICY)
    report, versions = log(project, [row("teacher", 1.0, 0.5)], "teacher")  # the champion is not among this run's
    champion_row = {**row("champion", 1.0, 2.0), "benchmark_noise": NOISY}
    decision = promote(report, versions, MODEL, POLICY, compare_with_champion=lambda version: champion_row)
    assert not decision["promoted"] and decision["noisy_benchmark"]
    assert decision["reason"].startswith("timing the current champion beside this run's teacher: the benchmark was noisy")
    aliases = mlflow.MlflowClient().get_registered_model(MODEL).aliases
    assert str(aliases[CHAMPION]) == first["student"] and CHALLENGER not in aliases
    allowed = PromotionPolicy.from_params(PROMOTION_PARAMS, allow_noisy=True)
    assert promote(report, versions, MODEL, allowed, compare_with_champion=lambda version: champion_row)["promoted"]


def test_a_promotion_stopped_after_the_alias_moved_is_recorded_by_the_next(project):
    """A run killed between moving `champion` and tagging the version (tests/faults does it for
    real) leaves the alias on a version without a decision; the next promotion records it."""
    rows = [row("teacher", 1.0, 2.0, eligible=False), row("student", 1.0, 1.0)]
    report, versions = log(project, rows, "student")
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL, CHAMPION, versions["student"])  # what the stopped run did
    decision = promote(report, versions, MODEL, POLICY)
    assert decision["promoted"] and "stopped before it recorded its decision" in decision["reason"]
    tags = client.get_model_version(MODEL, versions["student"]).tags
    assert tags["promotion.decision"] == "promoted"
    again = promote(report, versions, MODEL, POLICY)  # recorded once: later runs say as before
    assert not again["promoted"] and again["reason"] == "the challenger is already the champion"
