"""How a trial's outcome reaches the study (flows/search.py), on a real in-memory Optuna study: a
stopped-early trial is pruned, any other failure failed, and the search goes on; the stored
records are what the front and the cost read."""

import json

import optuna
import pytest

from flows.search import failure_status, records, tell
from tasks.stages import StageFailed
from textcompress.errors import StageError, StoppedEarly
from textcompress.search import front as fronts

PARAMS = {"search": {"objective": "latency_p50_ms"}}


def failed(kind: str) -> StageFailed:
    record = StageError.from_exception(StoppedEarly(0.61, 0.80, ["prune_structured", "quantize"]), "compress") \
        if kind == "stopped_early" else StageError("compress", kind, "boom")
    return StageFailed("stage compress@search-x failed", record)


def test_only_a_stopped_early_record_prunes_a_trial():
    assert failed("stopped_early").record.kind == "stopped_early"
    assert failure_status(failed("stopped_early")) == "pruned"
    assert failure_status(failed("internal")) == failure_status(failed("DataError")) == "failed"
    assert failure_status(StageFailed("killed", None)) == "failed"


def test_pruned_and_failed_trials_are_told_as_such_and_counted(capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    outcomes = [("pruned", 30.0), ("failed", 5.0)]
    for number, (status, seconds) in enumerate(outcomes):
        trial = study.ask()
        tell(study, trial, [{"distill": {"layers": 2}}], {"candidate": f"search-{number}", "status": status,
                                                          "seconds": seconds, "stages": {}, "error": "why"}, PARAMS)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]
    stored = records(study)
    assert [(r["candidate"], r["state"], r["recipe"]) for r in stored] == [
        ("search-0", "pruned", [{"distill": {"layers": 2}}]), ("search-1", "failed", [{"distill": {"layers": 2}}])]
    cost = fronts.cost_file(stored)
    assert (cost["pruned"], cost["failed"], cost["completed"], cost["seconds"]) == (1, 1, 0, 35.0)
    assert "search-0: pruned" in capsys.readouterr().out


def test_a_trial_that_trained_but_cannot_be_scored_fails_and_the_search_goes_on(tmp_path):
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    # status ok, but its workspace holds no metrics (removed, or never written): failed, not a crash
    tell(study, trial, [], {"candidate": "search-y", "status": "ok", "seconds": 1.0, "stages": {},
                            "workspace": str(tmp_path)}, PARAMS)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert "FileNotFoundError" in study.trials[0].user_attrs["error"]


@pytest.mark.parametrize("state", ["complete", "pruned", "failed"])
def test_records_read_the_state_names_front_py_uses(state):
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    trial.set_user_attr("candidate", "search-z")
    if state == "complete":
        study.tell(trial, [1.0, 0.5])
    else:
        study.tell(trial, state={"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}[state])
    assert records(study)[0]["state"] == state


def study_params(**changes) -> dict:
    from textcompress.config import DEFAULTS

    params = {section: dict(value) if isinstance(value, dict) else value for section, value in DEFAULTS.items()}
    params["search"].update(space=[{"quantize": {"mode": {"choices": ["dynamic", "static"]}}}], trials=6,
                            start_from=[[{"quantize": {"mode": "static"}}]])
    for key, value in changes.items():
        section, name = key.split(".")
        params[section][name] = value
    return params


def test_start_recipes_are_tried_first_and_once(tmp_path):
    from flows.search import open_study
    from textcompress.search.space import sample_recipe

    study = open_study(tmp_path, study_params(), "params/search.yaml")
    trial = study.ask()
    assert sample_recipe(study_params()["search"]["space"], trial) == [{"quantize": {"mode": "static"}}]
    study.tell(trial, [0.0, 0.5])
    again = open_study(tmp_path, study_params(), "params/search.yaml")  # resumed: tried already, not queued again
    assert len(again.trials) == 1 and all(t.state != optuna.trial.TrialState.WAITING for t in again.trials)


def test_a_start_recipe_tried_before_the_space_grew_is_not_queued_again(tmp_path):
    from flows.search import open_study
    from textcompress.search.space import candidate_name, sample_recipe

    study = open_study(tmp_path, study_params(), "params/search.yaml")
    trial = study.ask()
    trial.set_user_attr("candidate", candidate_name([{"quantize": {"mode": "static"}}]))
    study.tell(trial, [0.0, 0.5])
    # The space gains an optional first step: the same recipe's parameters now read
    # {"1.trim_vocab": False, "2.quantize.mode": "static"}, which Optuna alone would queue again.
    grown = [{"trim_vocab": {"min_count": 1}, "optional": True}, {"quantize": {"mode": {"choices": ["dynamic", "static"]}}}]
    again = open_study(tmp_path, study_params(**{"search.space": grown}), "params/search.yaml")
    assert len(again.trials) == 1
    with_trim = study_params(**{"search.space": grown, "search.start_from": [[{"trim_vocab": {"min_count": 1}},
                                                                                {"quantize": {"mode": "static"}}]]})
    queued = open_study(tmp_path, with_trim, "params/search.yaml")  # a new recipe is still queued
    assert len(queued.trials) == 2
    assert sample_recipe(grown, queued.ask()) == [{"trim_vocab": {"min_count": 1}}, {"quantize": {"mode": "static"}}]


@pytest.mark.parametrize("key, value", [("data.selection_by", "row"), ("search.objective", "size_mb"), ("teach.epochs", 9)])
def test_a_study_is_not_resumed_under_another_scoring_setup(tmp_path, key, value):
    from flows.search import open_study
    from textcompress.errors import ParamsError

    open_study(tmp_path, study_params(), "params/search.yaml")
    with pytest.raises(ParamsError) as caught:
        open_study(tmp_path, study_params(**{key: value}), "params/search.yaml")
    said = str(caught.value)
    assert caught.value.key == key and "holds a study scored with" in said and "search.db away" in said
    assert len(open_study(tmp_path, study_params(), "params/search.yaml").trials) == 1  # the study is untouched


def test_a_study_stored_with_its_objective_only_is_still_held_to_it(tmp_path):
    from flows.search import STUDY_NAME, open_study
    from textcompress.errors import ParamsError

    old = optuna.create_study(storage=f"sqlite:///{tmp_path / 'search.db'}", study_name=STUDY_NAME,
                              directions=["minimize", "minimize"])
    old.set_user_attr("objective", "size_mb")
    with pytest.raises(ParamsError, match="holds a study scored with 'size_mb'"):
        open_study(tmp_path, study_params(), "params/search.yaml")
    assert open_study(tmp_path, study_params(**{"search.objective": "size_mb"}), "params/search.yaml")


class PipelineReached(Exception):
    pass


@pytest.mark.parametrize("drop, upper, confirmed", [(0.5, 2.0, True), (1.5, 2.0, False)])
def test_a_member_within_the_budget_on_its_drop_is_confirmed_though_its_bound_is_over(tmp_path, monkeypatch, drop,
                                                                                      upper, confirmed):
    """Seeds and the final run (where promotion judges the bound on validation) take a member within
    the budget on the selection split's drop; one over it on the drop too ends the search with the
    closest, and no run."""
    import yaml

    import flows.search as search_flow
    from tests.search.test_front import trial

    seen = {}

    def seeds(root, params, members, threads, owed):
        seen["seeds"] = [m["candidate"] for m in members]
        return {}, {}

    def pipeline(**kwargs):
        seen["candidates"] = yaml.safe_load((tmp_path / "params.yaml").read_text())["candidates"]
        raise PipelineReached

    monkeypatch.setattr(search_flow, "repeat_seeds", seeds)
    monkeypatch.setattr(search_flow, "pipeline", pipeline)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"candidates": {}}))
    params = study_params()
    params["promotion"].update(max_accuracy_drop=1.0, budget_on="bound")
    trials = [trial(0, drop, 0.2, upper=upper)]
    if confirmed:
        with pytest.raises(PipelineReached):
            search_flow.finish(tmp_path, params, trials, threads=1)
        assert seen["seeds"] == ["search-0"] and "search-0" in seen["candidates"]
        cost = json.loads((tmp_path / "reports" / "search" / "cost.json").read_text())
        assert cost["trials"] == 1 and cost["seeds_seconds"] >= 0 and cost["seeds_left_out"] == {}
    else:
        summary = search_flow.finish(tmp_path, params, trials, threads=1)
        assert summary["promotion"] is None and "nothing met the budget" in summary["said"] and not seen


def test_seeds_trained_are_kept_in_the_study_and_read_back_by_a_resumed_search(tmp_path):
    from flows.search import Seeds, open_study

    study = open_study(tmp_path, study_params(), "params/search.yaml")
    Seeds(study).keep("search-a", {"seed": 43, "accuracy": 0.9, "drop": 0.2})
    Seeds(study).keep("search-a", {"seed": 44, "accuracy": 0.8, "drop": 1.2})
    resumed = Seeds(open_study(tmp_path, study_params(), "params/search.yaml"))
    assert [run["seed"] for run in resumed.runs["search-a"]] == [43, 44]
    alone = Seeds()  # no study (as finish is called in tests): kept for this finish only
    alone.keep("search-b", {"seed": 43, "accuracy": 0.9, "drop": 0.2})
    assert alone.runs == {"search-b": [{"seed": 43, "accuracy": 0.9, "drop": 0.2}]}


def test_a_trial_is_listed_beside_every_recipe_the_study_knows_for_the_prefix_store(tmp_path):
    from flows.search import known_recipes, steps_from_store
    from textcompress.search.space import candidate_name

    start = [{"distill": {"layers": 3}}, {"quantize": {"mode": "static"}}]
    tried, pending = [{"distill": {"layers": 2}}], [{"distill": {"layers": 3}}, {"quantize": {"mode": "dynamic"}}]
    study = optuna.create_study(directions=["minimize", "minimize"])
    tell(study, study.ask(), tried, {"candidate": candidate_name(tried), "status": "failed", "seconds": 1.0, "stages": {}}, PARAMS)
    known = known_recipes({"search": {"start_from": [start]}}, study, [pending])
    assert known == {candidate_name(r): r for r in (start, tried, pending)}
    # what compress wrote says how many steps came out of the store
    steps = tmp_path / "artifacts" / "compressed" / "search-z" / "steps.json"
    assert steps_from_store(tmp_path, "search-z") == 0  # not written: none
    steps.parent.mkdir(parents=True)
    steps.write_text(json.dumps({"steps": [{"prefix_store": {"source": "store"}}, {"prefix_store": {"source": "store"}},
                                           {"prefix_store": {"source": "computed"}}]}))
    assert steps_from_store(tmp_path, "search-z") == 2
