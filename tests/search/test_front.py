"""The search's results as data: trials scored on the selection split only, the front, the budget
(point or bound), the closest miss, the cost and what early stopping saved, the seeds' spread, and
what of the seeds and trials fits the time left."""

import pytest
import yaml

from textcompress.errors import TextcompressError
from textcompress.search import front as fronts

TIMING = {"latency_p50_ms": 2.0, "teacher_latency_p50_ms": 8.0, "size_mb": 5.0, "teacher_size_mb": 90.0}


def metrics(drop: float, upper: float, accuracy: float = 0.9) -> dict:
    # validation figures that would score very differently, so a scorer reading them would be caught
    return {"candidate": "c", "accuracy": 0.1, "accuracy_drop": 0.8, "accuracy_drop_upper": 0.9,
            "selection": {"accuracy": accuracy, "accuracy_drop": drop, "accuracy_drop_upper": upper}}


def trial(number, drop, second, state="complete", upper=None, seconds=100.0, candidate=None, smaller=10.0):
    scores = None if state != "complete" else {
        "drop": drop, "drop_upper": drop + 0.5 if upper is None else upper, "faster": 1 / second, "smaller": smaller,
        "accuracy": 0.9, "values": [drop, second]}
    return {"number": number, "state": state, "candidate": candidate or f"search-{number}", "recipe": [{"quantize": {}}],
            "scores": scores, "seconds": seconds}


def test_trials_are_scored_on_the_selection_split_never_on_validation():
    scores = fronts.trial_scores(metrics(0.012, 0.025), TIMING, "latency_p50_ms")
    assert scores["values"] == pytest.approx([1.2, 0.25])
    assert scores["drop_upper"] == pytest.approx(2.5) and scores["scored_on"] == "selection"
    assert scores["faster"] == pytest.approx(4.0) and scores["smaller"] == pytest.approx(18.0)
    assert fronts.trial_scores(metrics(0.012, 0.025), TIMING, "size_mb")["values"] == pytest.approx([1.2, 5.0])


def test_without_a_selection_split_a_trial_cannot_be_scored():
    with pytest.raises(TextcompressError, match="selection_fraction"):
        fronts.trial_scores({"candidate": "c", "accuracy": 0.9, "accuracy_drop": 0.01}, TIMING, "latency_p50_ms")


def test_the_front_keeps_only_unbeaten_completed_trials_once_each():
    trials = [trial(0, 0.5, 0.5), trial(1, 1.0, 0.2), trial(2, 1.5, 0.6), trial(3, 0.0, 0.9),
              trial(4, 0.5, 0.5, candidate="search-0"), trial(5, 0, 0, state="pruned"), trial(6, 0, 0, state="failed")]
    assert [t["number"] for t in fronts.pareto(trials)] == [3, 0, 1]


def test_size_counts_on_the_front_even_when_latency_steered_the_search():
    # 2 loses to 0 on drop and on latency, but it is the smallest: it stays; 3 loses on all three.
    trials = [trial(0, 0.5, 0.2, smaller=6.0), trial(1, 0.0, 0.3, smaller=5.0), trial(2, 0.7, 0.25, smaller=15.0),
              trial(3, 0.8, 0.3, smaller=4.0)]
    assert [t["number"] for t in fronts.pareto(trials)] == [1, 0, 2]


def test_the_budget_is_judged_on_the_point_or_on_the_bound():
    front = [trial(0, 0.5, 0.5, upper=1.4), trial(1, 0.9, 0.2, upper=0.95)]
    assert [t["number"] for t in fronts.within_budget(front, 1.0, "point")] == [0, 1]
    assert [t["number"] for t in fronts.within_budget(front, 1.0, "bound")] == [1]


def test_nothing_within_the_budget_names_the_closest():
    trials = [trial(0, 3.0, 0.2, upper=4.0), trial(1, 2.0, 0.5, upper=3.5), trial(2, 0, 0, state="failed")]
    said = fronts.nothing_met(trials, 1.0, "bound")
    assert said.startswith("nothing met the budget") and "closest: search-1" in said and "bound 3.50" in said
    assert "no trial completed" in fronts.nothing_met([trial(0, 0, 0, state="failed")], 1.0, "point")


def test_the_cost_counts_trials_and_what_early_stopping_saved():
    trials = [trial(0, 1, 1, seconds=100), trial(1, 1, 1, seconds=200), trial(2, 0, 0, state="pruned", seconds=60),
              trial(3, 0, 0, state="failed", seconds=10)]
    cost = fronts.cost_file(trials)
    assert (cost["trials"], cost["completed"], cost["pruned"], cost["failed"]) == (4, 2, 1, 1)
    assert cost["seconds"] == 370 and cost["seconds_saved_by_early_stopping"] == 90  # a typical trial: 150 s
    assert cost["saved_per_pruned_trial"] == {"search-2": 90}
    # a trial DVC found cached took seconds, not a training's time: the estimate leaves it out
    trained = {"compress@search-0": "ran"}
    trials = [{**trial(0, 1, 1, seconds=200), "stages": trained}, {**trial(1, 1, 1, seconds=5), "stages": {"compress@x": "cached"}},
              trial(2, 0, 0, state="pruned", seconds=60)]
    assert fronts.cost_file(trials)["seconds_saved_by_early_stopping"] == 140
    # a trial that loaded its first steps from the prefix store is named, with how many
    trials = [{**trial(0, 1, 1), "from_store": 0}, {**trial(1, 1, 1), "from_store": 2}, trial(2, 1, 1)]
    assert fronts.cost_file(trials)["steps_from_prefix_store"] == {"search-1": 2}


def test_the_seeds_mean_and_spread():
    spread = fronts.seed_spread([{"seed": 0, "accuracy": 0.90, "drop": 1.0}, {"seed": 1, "accuracy": 0.88, "drop": 3.0},
                                 {"seed": 2, "accuracy": 0.89, "drop": 2.0}])
    assert spread["accuracy"]["mean"] == pytest.approx(0.89) and spread["accuracy"]["std"] == pytest.approx(0.01)
    assert spread["drop"]["range"] == pytest.approx(2.0) and spread["seeds"] == [0, 1, 2]


def test_the_front_file_and_the_recipes_to_paste():
    trials = [trial(0, 0.5, 0.5, upper=1.4), trial(1, 1.0, 0.2, upper=0.95), trial(2, 0, 0, state="pruned")]
    front = fronts.front_file(trials, "latency_p50_ms", 1.0, "bound")
    assert (front["trials"], front["complete"], front["pruned"]) == (3, 2, 1)
    assert [(m["candidate"], m["within_budget"]) for m in front["front"]] == [("search-0", False), ("search-1", True)]
    pasted = yaml.safe_load(fronts.recipes_yaml(fronts.pareto(trials)))
    assert pasted == {"search-0": [{"quantize": {}}], "search-1": [{"quantize": {}}]}


def test_seeds_owed_are_planned_fastest_member_first_and_those_kept_are_not_trained_again():
    members = [trial(0, 0.2, 0.5, seconds=600), trial(1, 0.8, 0.2, seconds=1200)]
    done = {"search-0": [{"seed": 43, "accuracy": 0.9, "drop": 0.1}]}
    jobs, skipped, wall = fronts.seed_plan(members, 3, 42, done, workers=2)
    assert jobs == [("search-1", 43), ("search-1", 44), ("search-0", 44)] and not skipped
    assert wall == pytest.approx((1200 + 1200 + 600) / 2)
    assert fronts.seed_plan(members, 1, 42, {}, workers=2) == ([], {}, 0.0)  # seeds: 1 means the trial alone


def test_seeds_that_would_overrun_the_time_left_are_left_out_and_named():
    members = [trial(0, 0.2, 0.5, seconds=600), trial(1, 0.8, 0.2, seconds=1200)]
    jobs, skipped, wall = fronts.seed_plan(members, 3, 42, {}, workers=2, seconds_left=1000)
    # search-1's two seeds take 1200 s side by side: over 1000; search-0's two take 600
    assert jobs == [("search-0", 43), ("search-0", 44)] and wall == pytest.approx(600)
    assert list(skipped) == ["search-1"] and "did not fit" in skipped["search-1"] and "search.minutes" in skipped["search-1"]
    assert fronts.seed_plan(members, 3, 42, {}, workers=1, seconds_left=0)[0] == []


def test_a_member_that_loaded_steps_from_the_prefix_store_has_its_seeds_estimated_at_a_whole_recipe():
    # As on SST-2 (2026-12-07h): two trials trained whole in 1713 s and 2051 s; a third loaded its
    # first distill and took 737 s, but its seeds (another seed: another prefix) train every step.
    trained = [{**trial(n, 0.5, 0.3, seconds=s), "stages": {"compress@x": "ran"}} for n, s in ((0, 1713.0), (1, 2051.0))]
    loaded = {**trial(2, -0.1, 0.2, seconds=737.0), "stages": {"compress@x": "ran"}, "from_store": 2}
    cached = {**trial(3, 0.4, 0.25, seconds=5.0), "stages": {"compress@x": "cached"}}
    whole = fronts.whole_recipe_seconds([*trained, loaded, cached])
    assert whole == pytest.approx((1713 + 2051) / 2)
    jobs, skipped, _ = fronts.seed_plan([loaded], 3, 42, {}, workers=2, seconds_left=900, whole_seconds=whole)
    assert jobs == [] and "about 63 min" in skipped["search-2"]
    unloaded = {**loaded, "from_store": 0}
    assert fronts.seed_plan([unloaded], 3, 42, {}, workers=2, seconds_left=900, whole_seconds=whole)[0] == [
        ("search-2", 43), ("search-2", 44)]


def test_no_trial_starts_that_would_leave_the_front_s_seeds_without_time():
    trials = [trial(0, 0.5, 0.3, seconds=600), trial(1, 3.0, 0.1, seconds=1200)]  # mean trial 900 s; 1 within 1.0
    assert fronts.room_for_trials(trials, 1.0, 3, 42, {}, workers=1, seconds_left=None) is None
    # a trial (900 s) and search-0's two seeds one at a time (1200 s)
    assert fronts.room_for_trials(trials, 1.0, 3, 42, {}, workers=1, seconds_left=2100) is None
    said = fronts.room_for_trials(trials, 1.0, 3, 42, {}, workers=1, seconds_left=2000)
    assert said.startswith("no more trials") and "1 front member" in said
    kept = {"search-0": [{"seed": 43}, {"seed": 44}]}  # trained by an earlier run of the study: nothing owed
    assert fronts.room_for_trials(trials, 1.0, 3, 42, kept, workers=1, seconds_left=1000) is None
    assert fronts.room_for_trials([], 1.0, 3, 42, {}, workers=1, seconds_left=1) is None  # nothing yet to estimate from
    assert fronts.room_for_trials([], 1.0, 3, 42, {}, workers=1, seconds_left=0) is not None  # the time is up


def row(name, accuracy, latency, size, status="ok", recipe=None):
    return {"name": name, "status": status, "accuracy": accuracy, "accuracy_drop": None if accuracy is None else 100 * (0.90 - accuracy),
            "latency_p50_ms": latency, "size_mb": size, "recipe": recipe or [{"quantize": {}}], "eligible": False,
            "reasons": ["x"]}


def test_hand_written_candidates_are_judged_against_the_front_on_the_run_s_own_figures():
    # one teacher (0.90, 8 ms, 90 MB) and one benchmark; search-0 is 0.5 points down, 4x faster, 18x smaller
    report = {"teacher": "teacher", "baseline": "int8-dynamic", "rows": [
        row("teacher", 0.90, 8.0, 90.0, recipe=[]), row("search-0", 0.895, 2.0, 5.0),
        row("int8-dynamic", 0.890, 4.0, 23.0),      # more down, slower, larger: beaten
        row("int8-per-channel", 0.899, 4.0, 23.0),  # less down: not beaten, whatever its speed
        row("distill-l3", 0.895, 2.0, 5.0),         # the member's very figures: no worse, but better on none
        row("broken", None, None, None, status="failed")]}
    beaten = fronts.beaten_by(report, ["search-0"])
    assert beaten == {"int8-dynamic": "search-0", "int8-per-channel": None, "distill-l3": None, "broken": None}
    trials = [trial(0, 0.5, 0.25)]
    rows = {r["name"]: r for r in fronts.search_rows(report, trials, {})["rows"]}
    assert "beaten_by" not in rows["teacher"] and "beaten_by" not in rows["search-0"]
    assert rows["int8-dynamic"]["beaten_by"] == "search-0" and rows["search-0"]["search"]["trial"] == 0
    said = fronts.to_markdown(fronts.search_rows(report, trials, {}), "said")
    assert "- int8-dynamic: beaten by search-0" in said and "- int8-per-channel: not beaten by any member" in said


def test_a_candidate_no_member_beats_on_points_is_beaten_within_noise_only_by_a_faster_smaller_member_not_significantly_worse():
    # search-0: 0.5 points down, 4x faster, 18x smaller; search-1: 2 points down, 8x faster, 30x smaller
    report = {"teacher": "teacher", "baseline": "int8-dynamic", "rows": [
        row("teacher", 0.90, 8.0, 90.0, recipe=[]), row("search-0", 0.895, 2.0, 5.0), row("search-1", 0.880, 1.0, 3.0),
        row("int8-static", 0.902, 4.0, 23.0),   # 0.7 points more accurate than search-0 on 1,000 rows: 7 sentences
        row("distill-prune", 0.900, 1.5, 10.0),  # faster than search-0: only search-1 is faster and smaller
        row("fp16", 0.900, 8.0, 45.0)]}
    mcnemar = {("search-0", "int8-static"): {"only_a_correct": 20, "only_b_correct": 27, "p_value": 0.38},
               ("search-1", "distill-prune"): {"only_a_correct": 10, "only_b_correct": 30, "p_value": 0.002},
               ("search-0", "fp16"): {"only_a_correct": 5, "only_b_correct": 30, "p_value": 0.00002},
               ("search-1", "fp16"): {"only_a_correct": 30, "only_b_correct": 50, "p_value": 0.03}}
    asked = []

    def paired(member, name):
        asked.append((member, name))
        return mcnemar.get((member, name))

    rows = {r["name"]: r for r in fronts.search_rows(report, [trial(0, 0.5, 0.25), trial(1, 2.0, 0.125)], {}, paired, 0.05)["rows"]}
    assert rows["int8-static"]["beaten_by"] is None
    noise = rows["int8-static"]["beaten_within_noise"]
    assert noise["member"] == "search-0" and noise["p_value"] == 0.38 and (noise["faster"], noise["smaller"]) == pytest.approx((2.0, 4.6))
    assert rows["distill-prune"]["beaten_within_noise"] is None  # search-1 is faster and smaller, but significantly worse
    assert ("search-0", "distill-prune") not in asked          # search-0 is slower than it: no test is run
    assert rows["fp16"]["beaten_within_noise"] is None          # both members significantly worse
    assert "beaten_within_noise" not in rows["teacher"] and "beaten_within_noise" not in rows["search-0"]
    said = fronts.to_markdown({**report, "rows": list(rows.values())}, "said")
    assert "- int8-static: not beaten by any member; within noise by search-0: 2.00x faster and 4.60x smaller" in said
    assert "it gets 20 right and int8-static 27 (McNemar p = 0.38" in said
    assert "- distill-prune: not beaten by any member; none is faster and smaller" in said
    plain = {r["name"]: r for r in fronts.search_rows(report, [trial(0, 0.5, 0.25)], {})["rows"]}
    assert "beaten_within_noise" not in plain["int8-static"]  # no paired test given: no claim made
