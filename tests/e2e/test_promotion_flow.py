"""End to end, promotion through the real flow over four runs of one tiny project (two full runs,
two where DVC reruns little or nothing), and the report stage rerun between them. Nothing mocked.

The data make the outcomes certain rather than lucky. Every candidate is the teacher with its
word-piece table trimmed (`trim_vocab`), and so labels exactly as the teacher does any sentence
whose pieces it kept. The first data use four sentiment words; the second data add four new ones
(rare in training, never in the selection split), and their validation set is pairs of sentences
that differ only in the new word. A model whose vocabulary lacks the new words reads both
sentences of a pair as the same tokens, so it is right on exactly half of validation:

1. first data (teacher, keep, and int8-dynamic: keep quantized): the pick is promoted, as no
   champion exists yet. Then the benchmark output is made to say int8's fp32 parent is faster, and the real
   report stage and promotion run again: int8 is ineligible and the alias does not move to it.
2. second data, the first champion's artifact gone from the store: kept, and the decision says why.
   From here on `export.agreement_gate` is above 1, so the int8 baseline every run must have is
   never eligible and timing decides nothing.
3. the artifact back, nothing else changed: the first champion (trimmed on the first data, so blind
   to the new words) is measured on this run's validation rows, paired with this run's pick, and
   replaced because it is now over the accuracy budget.
4. a candidate trimmed of the rare words added: the smallest, and as good as the teacher on the
   selection split, so chosen there; half wrong on validation, so not promoted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.e2e.tiny_project import build_tiny_project

MODEL = "tiny-promotion"
BUDGET = 5.0
SELECTION_FRACTION = 0.1
COMMON = {1: ["good", "great"], 0: ["bad", "awful"]}
NEW = {1: ["excellent", "enjoyed"], 0: ["terrible", "dull"]}  # in the tiny vocabulary; absent from the first data
TOPICS, INTENSIFIERS = ["movie", "film", "plot"], ["really", "very", "so"]
NEW_WORD_ROWS = 80  # 20 per new word: fewer than BLIND's min_count, so trim_vocab drops them
KEEP = [{"trim_vocab": {"min_count": 1}}]  # keeps every piece training uses
INT8 = KEEP + [{"quantize": {"mode": "dynamic"}}]
BLIND = [{"trim_vocab": {"min_count": 21}}]  # keeps the common pieces (60+ each), drops the new words


def sentence(i: int, words: dict) -> tuple[str, int]:
    """The i-th row over `words`, cycling through labels, words, topics and intensifiers."""
    label = i % 2
    return f"the {TOPICS[i % 3]} was {INTENSIFIERS[(i // 3) % 3]} {words[label][(i // 2) % 2]} .", label


def first_data() -> tuple[list, list]:
    return [sentence(i, COMMON) for i in range(300)], [sentence(i, COMMON) for i in range(60)]


def second_data() -> tuple[list, list]:
    """Training rows with the new words placed where the selection split (carved by the library,
    seeded) never takes them; validation: pairs differing only in a new word, one per label."""
    from textcompress.data import carve_selection

    n = 380
    selection = set(carve_selection(("train", list(range(n)), [0] * n), SELECTION_FRACTION, by="row")["selection"][1])
    new_positions = set([i for i in range(n) if i not in selection][::4][:NEW_WORD_ROWS])
    train, common, new = [], 0, 0
    for position in range(n):
        if position in new_positions:
            train.append(sentence(new, NEW))
            new += 1
        else:
            train.append(sentence(common, COMMON))
            common += 1
    validation = [(f"the {topic} was {how} {NEW[label][k]} .", label)
                  for topic in TOPICS for how in INTENSIFIERS for k in range(2) for label in (1, 0)]
    return train, validation


def write_tsv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))


def dvc(project: Path, *args: str) -> None:
    from textcompress.workspace import project_env

    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True, capture_output=True, text=True,
                   env=project_env())


def set_candidates(project: Path, candidates: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["candidates"] = candidates
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def client():
    import mlflow

    return mlflow.MlflowClient()


def aliases() -> dict[str, str]:
    return {alias: str(version) for alias, version in client().get_registered_model(MODEL).aliases.items()}


def read(project: Path, name: str):
    return json.loads((project / "reports" / name).read_text())


def rows(report: dict) -> dict:
    return {r["name"]: r for r in report["rows"]}


def time_the_parent_faster(project: Path) -> dict:
    """Make reports/benchmark.json say int8's fp32 parent is twice as fast as int8 (timing cannot
    be forced), then rerun the real report stage through DVC and the promotion service."""
    from textcompress.config import load_params
    from textcompress.decisions.registry import promote_run

    benchmark = read(project, "benchmark.json")
    seen = {"measured_parent": dict(benchmark["candidates"]["int8-dynamic@fp32-parent"]),  # from the real benchmark stage
            "row_before": rows(read(project, "candidates.json"))["int8-dynamic"], "aliases_before": aliases()}
    parent = benchmark["candidates"]["int8-dynamic"]["latency_p50_ms"] / 2
    benchmark["candidates"]["int8-dynamic@fp32-parent"]["latency_p50_ms"] = parent
    (project / "reports" / "benchmark.json").write_text(json.dumps(benchmark))
    dvc(project, "repro", "--single-item", "report")
    seen.update(parent=parent, report=read(project, "candidates.json"), table=(project / "reports" / "candidates.md").read_text(),
                decision=promote_run(project, load_params(project / "params.yaml"), read(project, "run.json")["versions"]),
                aliases_after=aliases())
    return seen


def switch_to_second_data(project: Path) -> None:
    train, validation = second_data()
    write_tsv(project / "data" / "train.tsv", train)
    write_tsv(project / "data" / "validation.tsv", validation)
    dvc(project, "add", "-q", "data")
    dvc(project, "push", "-q", "data.dvc")
    set_candidates(project, {"teacher": [], "keep": KEEP, "int8-dynamic": INT8})
    # From here on no quantized candidate is eligible (agreement with its fp32 parent cannot exceed
    # 1), so which one is picked never depends on timing; run 1 and the guardrail above ran without this.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["export"]["agreement_gate"] = 1.01
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run([*git, "commit", "-qam", "new data"], cwd=project, check=True, capture_output=True)


def artifact_folder(version) -> Path:
    """Where the registry's store keeps this version's files (mlruns/ beside mlflow.db)."""
    source = version.source
    if source.startswith("models:/"):  # a logged model: its own folder in the store
        source = client().get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(urlparse(source).path)


@pytest.fixture(scope="module")
def history(tmp_path_factory, prefect_harness) -> dict:
    import mlflow

    from flows.pipeline import pipeline

    sections = {"data": {"selection_fraction": SELECTION_FRACTION, "selection_by": "row"}, "teach": {"epochs": 5},
                "promotion": {"registered_model": MODEL, "objective": "size_mb", "select_on": "selection",
                              "max_accuracy_drop": BUDGET}}
    project = build_tiny_project(tmp_path_factory.mktemp("e2e-promotion"), {"teacher": [], "keep": KEEP, "int8-dynamic": INT8},
                                 sections=sections, rows=first_data())
    seen: dict = {"project": project}
    cwd = os.getcwd()
    try:
        seen["first"] = pipeline(project_dir=str(project), pull=True)
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        first_champion = client().get_model_version_by_alias(MODEL, "champion")
        seen["first_champion"] = str(first_champion.version)
        seen["guardrail"] = time_the_parent_faster(project)

        switch_to_second_data(project)
        store = artifact_folder(first_champion)
        lost = store.with_name(store.name + ".lost")
        store.rename(lost)  # the store lost the champion's files (cleaned by hand, or not mounted here)
        seen["lost"] = pipeline(project_dir=str(project), pull=True)
        seen["lost_aliases"] = aliases()
        lost.rename(store)

        seen["measured"] = pipeline(project_dir=str(project), pull=True)
        seen["measured_aliases"] = aliases()
        seen["measured_run_json"] = read(project, "run.json")
        seen["measured_report"] = read(project, "candidates.json")

        set_candidates(project, {"teacher": [], "keep": KEEP, "int8-dynamic": INT8, "blind": BLIND})
        seen["gated"] = pipeline(project_dir=str(project), pull=True)
        seen["gated_aliases"] = aliases()
        seen["gated_report"] = read(project, "candidates.json")
    finally:
        os.chdir(cwd)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return seen


@pytest.mark.e2e
def test_a_quantized_candidate_not_faster_than_its_fp32_parent_is_ineligible_and_not_promoted(history):
    first, seen = history["first"], history["guardrail"]
    assert first["promotion"]["promoted"] and first["promotion"]["reason"] == "no champion yet"
    # The real benchmark timed the parent, and the report carried its number to int8's row.
    assert seen["measured_parent"]["latency_p50_ms"] > 0
    assert seen["row_before"]["parent_latency_p50_ms"] == seen["measured_parent"]["latency_p50_ms"]
    # With the parent twice as fast, the rerun report stage makes int8 ineligible and says why.
    int8 = rows(seen["report"])["int8-dynamic"]
    assert int8["parent_latency_p50_ms"] == seen["parent"]
    assert int8["eligible"] is False
    why = f"p50 latency {int8['latency_p50_ms']:.2f} ms is not below its fp32 parent's {seen['parent']:.2f} ms"
    assert any(reason.startswith(why) for reason in int8["reasons"]), int8["reasons"]
    assert "- **int8-dynamic**: " in seen["table"] and why in seen["table"]
    # int8 is the smallest, the pick under this objective but for its gates. keep (the teacher's
    # labels exactly) is picked instead, and promotion leaves the alias where it was.
    assert int8["size_mb"] < rows(seen["report"])["keep"]["size_mb"]
    assert seen["report"]["pick"] == "keep" and seen["decision"]["challenger"] == "keep"
    assert not seen["decision"]["promoted"]
    assert seen["aliases_after"]["champion"] == seen["aliases_before"]["champion"] == history["first_champion"]


@pytest.mark.e2e
def test_a_champion_that_cannot_be_measured_is_kept_and_the_decision_says_why(history):
    run = history["lost"]
    decision = run["promotion"]
    assert run["failed"] == {} and run["stages"]["teach"] == "ran"  # new data: a full run
    assert history["first_champion"] not in run["versions"].values()  # so the champion must be measured
    assert decision["previous_champion"]["version"] == history["first_champion"]
    assert decision["challenger"] == "keep" and not decision["promoted"] and "paired_test" not in decision
    assert decision["reason"].startswith("the current champion could not be measured in this run (")
    assert decision["reason"].endswith("; kept")
    assert history["lost_aliases"] == {"champion": history["first_champion"], "challenger": run["versions"]["keep"]}


@pytest.mark.e2e
def test_a_champion_from_an_earlier_run_is_measured_on_this_runs_data_and_replaced_as_the_policy_says(history):
    import mlflow
    import numpy as np
    import pandas as pd

    from textcompress.data import load_split

    project, run, decision = history["project"], history["measured"], history["measured"]["promotion"]
    assert set(run["stages"].values()) == {"cached"}  # nothing changed but the store has the files again
    assert run["versions"] == history["lost"]["versions"]
    assert history["first_champion"] not in run["versions"].values()
    # This run's teacher reads the new words (else nothing here could tell the models apart).
    report = rows(history["measured_report"])
    assert report["teacher"]["accuracy"] >= 0.9 and report["keep"]["accuracy_drop"] == 0.0

    # The paired test compared this run's pick with the first champion on this run's validation rows,
    # as the first champion labels them through its own (first-data) tokenizer: served from the
    # registry here, it cannot tell the new words apart, so it is right on exactly half.
    validation = load_split(project / "artifacts" / "prepared", "validation")
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/{history['first_champion']}")
    champion_labels = served.predict(pd.DataFrame({"text": validation.texts}))["label"]
    champion_right = np.asarray([int(label) for label in champion_labels]) == validation.labels
    pick_right = np.asarray(json.loads((project / "artifacts" / "metrics" / "keep.json").read_text())["predictions"]) \
        == validation.labels
    assert champion_right.mean() == 0.5
    test = decision["paired_test"]
    assert test["rows"] == len(validation) == 36
    assert test["only_a_correct"] == int((pick_right & ~champion_right).sum()) > 0
    assert test["only_b_correct"] == int((~pick_right & champion_right).sum())

    # The policy: measured on this data the first champion is over the budget, so the pick replaces it.
    assert decision["previous_champion"]["version"] == history["first_champion"]
    assert decision["promoted"] is True
    assert decision["reason"] == "beats the champion: the current champion is now over the accuracy budget"
    keep = run["versions"]["keep"]
    assert history["measured_aliases"] == {"champion": keep}
    assert history["measured_run_json"]["promotion"] == json.loads(json.dumps(decision))
    tags = client().get_model_version(MODEL, keep).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.replaced_version"] == history["first_champion"]


@pytest.mark.e2e
def test_a_pick_chosen_on_the_selection_split_and_over_the_validation_budget_is_not_promoted(history):
    from textcompress.data import load_split

    project, run, decision = history["project"], history["gated"], history["gated"]["promotion"]
    # Only the new candidate's stages (and the two that read every candidate) ran.
    ran = {stage for stage, status in run["stages"].items() if status == "ran"}
    assert ran == {"compress@blind", "export@blind", "evaluate@blind", "benchmark", "report"}
    # The selection split holds none of the new words, so blind labels it as the teacher does.
    selection = load_split(project / "artifacts" / "prepared", "selection")
    assert len(selection) == 38 and not any(w in text.split() for text in selection.texts for w in NEW[0] + NEW[1])
    blind = rows(history["gated_report"])["blind"]
    assert blind["eligible"] and blind["selection_accuracy_drop"] == 0.0
    assert blind["accuracy"] == 0.5 and blind["accuracy_drop"] > BUDGET
    assert history["gated_report"]["pick"] == "blind"  # the smallest eligible candidate

    assert decision["challenger"] == "blind" and not decision["promoted"]
    assert decision["reason"] == (f"chosen on the selection split, but {blind['accuracy_drop']:.2f} points below the teacher "
                                  f"on validation, over the budget of {BUDGET}: not promoted")
    champion = history["measured"]["versions"]["keep"]
    assert history["gated_aliases"] == {"champion": champion, "challenger": run["versions"]["blind"]}
    assert client().get_model_version(MODEL, run["versions"]["blind"]).tags["promotion.decision"] == "not promoted"
