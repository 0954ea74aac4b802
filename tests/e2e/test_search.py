"""`textcompress search` on the tiny project, with the real Prefect, DVC, Optuna and MLflow: trials
are candidates trained through DVC (a configuration seen before trains nothing), the study resumes
from search.db, the front is on disk in the candidates.json schema, each trial is a nested MLflow
run, and trials are scored on the selection split."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import yaml

from textcompress.data import load_split
from textcompress.search.space import candidate_name

from tests.e2e.tiny_project import REPO, build_tiny_project

STUDENT = {"student": "bert", "layers": 1, "epochs": 1, "lr": 3e-3, "batch_size": 16}
# Two configurations: three trials must repeat one, so the run-cache is exercised whatever the sampler picks.
SPACE = [{"distill": STUDENT}, {"quantize": {"mode": {"choices": ["dynamic", "static"]}, "calibration": 32}}]
START = [{"distill": STUDENT}, {"quantize": {"mode": "static", "calibration": 32}}]  # tried first
START_DYNAMIC = [{"distill": STUDENT}, {"quantize": {"mode": "dynamic", "calibration": 32}}]  # then this: the same distill


def search_profile(project):
    """params/search.yaml: the tiny project's params with a selection split and the search section."""
    shutil.copy(REPO / ".gitignore", project / ".gitignore")  # runs/, .sweep/, search.db stay out of workspaces
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["selection_fraction"] = 0.2
    params["promotion"].update(registered_model="tiny-search", max_accuracy_drop=50.0)  # the mechanics, not the model
    params["runtime"]["cache_dir"] = str(project.parent / "states")  # a prefix store of this test's own
    params["search"] = {"space": SPACE, "trials": 3, "seeds": 2, "benchmark_sentences": 20, "start_from": [START, START_DYNAMIC]}
    (project / "params").mkdir(exist_ok=True)
    (project / "params" / "search.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_search(project, *args):
    from textcompress.cli import main

    cwd = os.getcwd()
    try:
        main(["--project", str(project), "search", "--params", "params/search.yaml", *args])
    finally:
        os.chdir(cwd)


@pytest.mark.e2e
def test_a_search_trains_trials_as_candidates_resumes_and_reports_its_front(tmp_path_factory, prefect_harness):
    import mlflow
    import optuna

    from textcompress.fileio import read_json

    project = build_tiny_project(tmp_path_factory.mktemp("search"))
    search_profile(project)
    where = project / "runs" / "search"

    run_search(project)  # search.trials: 3
    study = optuna.load_study(study_name="textcompress-search", storage=f"sqlite:///{where / 'search.db'}")
    assert len(study.trials) == 3
    assert [t.user_attrs["candidate"] for t in study.trials[:2]] == [candidate_name(START), candidate_name(START_DYNAMIC)]
    # The second start recipe begins as the first: its distill came out of the prefix store, trained once.
    assert [t.user_attrs["from_store"] for t in study.trials[:2]] == [0, 1]
    run_search(project, "--trials", "2")  # the same study, resumed
    study = optuna.load_study(study_name="textcompress-search", storage=f"sqlite:///{where / 'search.db'}")
    trials = study.trials
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), \
        [(t.state, t.user_attrs.get("error")) for t in trials]

    # Every trial is a DVC candidate; a configuration seen before (in this search or the first) trained nothing.
    seen: set[str] = set()
    for trial in trials:
        candidate, stages = trial.user_attrs["candidate"], trial.user_attrs["stages"]
        assert candidate.startswith("search-") and set(stages) == {f"{s}@{candidate}" for s in ("compress", "export", "evaluate")}
        if candidate in seen:
            assert set(stages.values()) == {"cached"}, (trial.number, stages)
        seen.add(candidate)
    assert len(seen) <= 2 < len(trials)

    # Scored on the selection split: each front member's objective is its selection drop in the final run's evaluation.
    out = where / "reports" / "search"
    front = read_json(out / "front.json")
    assert front["scored_on"] == "selection" and front["trials"] == 5 and front["front"]
    for member in front["front"]:
        metrics = read_json(where / "artifacts" / "metrics" / f"{member['candidate']}.json")
        assert member["drop"] == pytest.approx(100 * metrics["selection"]["accuracy_drop"])
        assert member["drop_upper"] == pytest.approx(100 * metrics["selection"]["accuracy_drop_upper"])

    # reports/search/candidates.json: the run's candidates.json schema, for the profile's candidates and the front;
    # each hand-written one (int8-dynamic, distill-l2) with the member that beats it on this run's figures, if one does.
    report, run_report = read_json(out / "candidates.json"), read_json(where / "reports" / "candidates.json")
    assert set(report) == set(run_report)
    hand_written = {"int8-dynamic", "distill-l2"}
    assert {r["name"] for r in report["rows"]} == {"teacher", *hand_written, *(m["candidate"] for m in front["front"])}
    assert {r["name"] for r in report["rows"] if "beaten_by" in r} == hand_written
    assert all(r["beaten_by"] in (None, *(m["candidate"] for m in front["front"])) for r in report["rows"] if "beaten_by" in r)
    assert "Hand-written candidates against the front" in (out / "candidates.md").read_text()
    # One no member beats on the point estimates is judged within noise: McNemar's test on the same validation
    # sentences, its counts those of the two models' predictions.
    labels = load_split(where / "artifacts" / "prepared", "validation").labels
    correct = {r["name"]: np.asarray(read_json(where / "artifacts" / "metrics" / f"{r['name']}.json")["predictions"]) == labels
               for r in report["rows"]}
    for row in (r for r in report["rows"] if "beaten_by" in r):
        assert ("beaten_within_noise" in row) == (row["beaten_by"] is None), row["name"]
        noise = row.get("beaten_within_noise")
        if noise:
            mine, theirs = correct[noise["member"]], correct[row["name"]]
            assert (noise["member_only_correct"], noise["theirs_only_correct"]) == ((mine & ~theirs).sum(), (~mine & theirs).sum())
            assert noise["faster"] >= 1 and noise["smaller"] >= 1
    run_keys = set(run_report["rows"][0])
    for row in report["rows"]:
        assert run_keys <= set(row)
        if row["name"].startswith("search-"):  # each front member's seeds (2): mean and spread
            assert len(row["search"]["seeds"]["accuracy"]["values"]) == 2, row["search"]
    # Each member's second seed is kept in the study, trained once across both runs (a resumed finish owes none).
    second = yaml.safe_load((project / "params" / "search.yaml").read_text())["seed"] + 1
    kept = study.user_attrs["seeds"]
    assert kept and all([run["seed"] for run in runs] == [second] for runs in kept.values()), kept
    if len(kept) == 2:  # both recipes on the front: their second seeds share the distill, trained once
        assert sorted(run["from_store"] for runs in kept.values() for run in runs) == [0, 1], kept
    for name in ("candidates.md", "front.png", "recipes.yaml", "cost.json"):
        assert (out / name).is_file(), name
    assert read_json(out / "cost.json")["trials"] == 5
    assert read_json(out / "cost.json")["steps_from_prefix_store"] == {candidate_name(START_DYNAMIC): 1}
    pasted = yaml.safe_load((out / "recipes.yaml").read_text())
    assert set(pasted) == {m["candidate"] for m in front["front"]}

    # MLflow: one parent run for the search (resumed by the second), a nested run per trial.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = study.user_attrs["mlflow_parent_run"]
    nested = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(nested) == 5 and {r.data.tags["candidate"] for r in nested} == seen
    assert all({"drop", "ratio", "p50_ms", "size_mb", "seconds"} <= set(r.data.metrics) for r in nested)
    # The front went through the ordinary promotion path of the final run.
    assert read_json(where / "reports" / "promotion.json")["registered_model"] == "tiny-search"

    # A budget no trial can meet: said with the closest trial; no final run, no alias moved.
    def champion():
        aliased = [v for v in client.search_model_versions("name='tiny-search'") if "champion" in (v.aliases or [])]
        return [v.version for v in aliased]

    before = champion()
    promotion_file = (where / "reports" / "promotion.json").read_text()
    profile = yaml.safe_load((project / "params" / "search.yaml").read_text())
    profile["promotion"]["max_accuracy_drop"] = -100.0
    (project / "params" / "search.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    run_search(project, "--trials", "0")  # no new trial: the stored front judged again under the new budget
    said = (out / "candidates.md").read_text()
    assert "nothing met the budget" in said and "closest: search-" in said
    assert champion() == before
    assert (where / "reports" / "promotion.json").read_text() == promotion_file  # no pipeline run, no promotion
    assert len(optuna.load_study(study_name="textcompress-search", storage=f"sqlite:///{where / 'search.db'}").trials) == 5
