"""Tests for textcompress.decisions.promotion: the policy's one budget check, eligibility, the pick and beats()."""

from __future__ import annotations

from dataclasses import replace

import pytest

from textcompress.decisions.promotion import PromotionPolicy
from textcompress.errors import PolicyError

POLICY = PromotionPolicy.from_params({"registered_model": "m", "objective": "latency_p50_ms", "max_accuracy_drop": 1.0})
GOOD_EXPORT = {"parity_max_abs_diff": 2e-6, "parity_ok": True, "parity_tolerance": 1e-4}


def row(name="distil-2", status="ok", accuracy_drop=0.5, reasons=None, **extra):
    return {"name": name, "status": status, "accuracy_drop": accuracy_drop, "reasons": reasons or [], **extra}


def test_a_faithful_candidate_within_budget_has_no_reasons():
    assert POLICY.eligibility_reasons(row(), GOOD_EXPORT) == []


def test_a_drop_exactly_at_the_budget_is_allowed():
    assert POLICY.eligibility_reasons(row(accuracy_drop=1.0), GOOD_EXPORT) == []


def test_parity_failure_makes_a_candidate_ineligible():
    export = {"parity_max_abs_diff": 0.3, "parity_ok": False, "parity_tolerance": 1e-4}
    reasons = POLICY.eligibility_reasons(row(), export)
    assert len(reasons) == 1 and "parity" in reasons[0] and "0.3" in reasons[0]


def test_a_missing_export_report_counts_as_a_parity_failure():
    reasons = POLICY.eligibility_reasons(row(), {})
    assert len(reasons) == 1 and "parity" in reasons[0]


def test_agreement_gate_failure_makes_a_quantized_candidate_ineligible():
    export = {**GOOD_EXPORT, "label_agreement_with_fp32": 0.95, "agreement_gate": 0.98, "agreement_ok": False}
    reasons = POLICY.eligibility_reasons(row(), export)
    assert len(reasons) == 1 and "agreement" in reasons[0] and "0.9500" in reasons[0] and "0.98" in reasons[0]


def test_passing_the_agreement_gate_adds_no_reason():
    export = {**GOOD_EXPORT, "label_agreement_with_fp32": 0.99, "agreement_gate": 0.98, "agreement_ok": True}
    assert POLICY.eligibility_reasons(row(), export) == []


def test_over_the_accuracy_budget_makes_a_candidate_ineligible():
    reasons = POLICY.eligibility_reasons(row(accuracy_drop=1.5), GOOD_EXPORT)
    assert len(reasons) == 1 and "accuracy drop 1.50" in reasons[0]


def test_the_teacher_is_never_eligible():
    reasons = POLICY.eligibility_reasons(row(name="teacher", accuracy_drop=0.0), GOOD_EXPORT)
    assert len(reasons) == 1 and "teacher" in reasons[0]


def test_a_failed_row_reports_its_failure_only():
    reasons = POLICY.eligibility_reasons(row(status="failed", reasons=["compress crashed"], accuracy_drop=None), {})
    assert reasons == ["failed: compress crashed"]


def test_several_problems_give_several_reasons():
    export = {"parity_max_abs_diff": 0.3, "parity_ok": False, "parity_tolerance": 1e-4}
    assert len(POLICY.eligibility_reasons(row(accuracy_drop=3.0), export)) == 2


# ---------------------------------------------------------------------------
# pick

ROWS = [
    {"name": "teacher", "eligible": False, "latency_p50_ms": 9.0, "accuracy": 0.92, "size_mb": 90.0},
    {"name": "fastest-but-inaccurate", "eligible": False, "latency_p50_ms": 1.0, "accuracy": 0.80, "size_mb": 10.0},
    {"name": "int8-dynamic", "eligible": True, "latency_p50_ms": 4.0, "accuracy": 0.915, "size_mb": 23.0},
    {"name": "distil-3", "eligible": True, "latency_p50_ms": 3.0, "accuracy": 0.912, "size_mb": 45.0},
    {"name": "not-benchmarked", "eligible": True, "latency_p50_ms": None, "accuracy": 0.919, "size_mb": 40.0},
]


def test_pick_picks_the_lowest_p50_among_eligible():
    assert POLICY.pick(ROWS) == "distil-3"


def test_pick_follows_other_objectives():
    assert replace(POLICY, objective="size_mb").pick(ROWS) == "int8-dynamic"
    assert replace(POLICY, objective="accuracy").pick(ROWS) == "not-benchmarked"


def test_pick_is_none_when_nothing_is_eligible():
    assert POLICY.pick([{**r, "eligible": False} for r in ROWS]) is None
    assert POLICY.pick([]) is None


def test_pick_rejects_an_unknown_objective():
    with pytest.raises(ValueError, match="fastest"):
        PromotionPolicy.from_params({"objective": "fastest", "max_accuracy_drop": 1.0}).pick(ROWS)


# ---------------------------------------------------------------------------
# beats


def candidate(p50, drop=0.2, accuracy=0.9):
    return {"latency_p50_ms": p50, "accuracy_drop": drop, "accuracy": accuracy}


def test_a_faster_challenger_beats_the_champion():
    wins, why = POLICY.beats(candidate(2.0), candidate(3.0))
    assert wins and "latency_p50_ms" in why


@pytest.mark.parametrize("p50", [3.0, 4.0])
def test_an_equal_or_slower_challenger_does_not_beat_the_champion(p50):
    assert POLICY.beats(candidate(p50), candidate(3.0))[0] is False


def test_a_challenger_over_budget_never_wins():
    wins, why = POLICY.beats(candidate(1.0, drop=1.5), candidate(3.0))
    assert not wins and "budget" in why


def test_a_champion_over_budget_loses_to_any_challenger_within_it():
    wins, why = POLICY.beats(candidate(5.0, drop=0.5), candidate(3.0, drop=2.0))
    assert wins and "champion" in why


def test_beats_with_a_maximised_objective():
    policy = replace(POLICY, objective="accuracy")
    assert policy.beats(candidate(5.0, accuracy=0.91), candidate(3.0, accuracy=0.90))[0] is True
    assert policy.beats(candidate(1.0, accuracy=0.89), candidate(3.0, accuracy=0.90))[0] is False


def test_a_quantized_candidate_slower_than_its_fp32_parent_is_ineligible():
    reasons = POLICY.eligibility_reasons(row(latency_p50_ms=5.0, parent_latency_p50_ms=4.0), GOOD_EXPORT)
    assert len(reasons) == 1 and "not below its fp32 parent" in reasons[0]
    assert POLICY.eligibility_reasons(row(latency_p50_ms=3.0, parent_latency_p50_ms=4.0), GOOD_EXPORT) == []


def significance_policy(**extra):
    return replace(POLICY, **{"require_significance": True, "significance_level": 0.05, **extra})


def test_a_significantly_less_accurate_challenger_loses_when_significance_is_required():
    test = {"only_a_correct": 3, "only_b_correct": 30, "p_value": 1e-6, "rows": 872}
    challenger, champion = candidate(2.0, drop=0.5), candidate(3.0, drop=0.1)
    wins, why = significance_policy().beats(challenger, champion, test)
    assert not wins and "significantly less accurate" in why
    # without the requirement the faster challenger wins
    assert POLICY.beats(challenger, champion, test)[0]
    # a difference that is not significant does not block it
    assert significance_policy().beats(challenger, champion, {**test, "only_a_correct": 12, "only_b_correct": 15, "p_value": 0.7})[0]


def test_under_the_accuracy_objective_the_gain_must_be_significant():
    policy = significance_policy(objective="accuracy")
    challenger, champion = candidate(2.0, drop=0.1, accuracy=0.91), candidate(3.0, drop=0.3, accuracy=0.90)
    wins, why = policy.beats(challenger, champion, {"only_a_correct": 10, "only_b_correct": 8, "p_value": 0.81, "rows": 872})
    assert not wins and "not significant" in why
    assert policy.beats(challenger, champion, {"only_a_correct": 40, "only_b_correct": 8, "p_value": 1e-5, "rows": 872})[0]


def test_choosing_on_the_selection_split_checks_the_budget_there():
    policy = replace(POLICY, select_on="selection")
    chosen = row(accuracy_drop=3.0, selection_accuracy_drop=0.4)  # over on validation, fine on selection
    assert policy.eligibility_reasons(chosen, GOOD_EXPORT) == []
    over = policy.eligibility_reasons(row(accuracy_drop=0.2, selection_accuracy_drop=2.0), GOOD_EXPORT)
    assert len(over) == 1 and "on the selection split" in over[0]
    assert "no selection accuracy" in policy.eligibility_reasons(row(), GOOD_EXPORT)[0]


# ---------------------------------------------------------------------------
# the budget: one check


@pytest.mark.parametrize("drop, within", [(-0.3, True), (0.0, True), (1.0, True), (1.0001, False), (2.0, False), (None, False)])
def test_within_budget_is_at_most_max_accuracy_drop_points(drop, within):
    assert POLICY.within_budget(drop) is within


def test_every_budget_decision_goes_through_within_budget(monkeypatch):
    """Eligibility, the validation gate and beats() all ask within_budget: a looser budget there
    loosens every one of them (so no second copy of the comparison can disagree)."""
    monkeypatch.setattr(PromotionPolicy, "within_budget", lambda self, drop, split="validation": True)
    over = row(accuracy_drop=5.0, selection_accuracy_drop=5.0)
    assert POLICY.eligibility_reasons(over, GOOD_EXPORT) == []
    assert replace(POLICY, select_on="selection").eligibility_reasons(over, GOOD_EXPORT) == []
    assert POLICY.validation_gate(over) is None
    assert POLICY.beats(candidate(1.0, drop=5.0), candidate(3.0))[0]


def test_a_pick_chosen_on_the_selection_split_is_gated_on_validation():
    policy = replace(POLICY, select_on="selection")
    assert policy.validation_gate(row(accuracy_drop=1.0)) is None
    why = policy.validation_gate(row(accuracy_drop=3.0, selection_accuracy_drop=0.4))
    assert "chosen on the selection split" in why and "3.00 points" in why and "budget of 1.0" in why


def test_the_policy_is_built_from_the_promotion_params():
    params = {"registered_model": "sst2-classifier", "max_accuracy_drop": 0.5, "objective": "size_mb", "select_on": "selection",
              "require_significance": True, "significance_level": 0.01}
    policy = PromotionPolicy.from_params(params)
    assert (policy.max_accuracy_drop, policy.objective, policy.select_on, policy.require_significance,
            policy.significance_level, policy.teacher) == (0.5, "size_mb", "selection", True, 0.01, "teacher")
    with pytest.raises(ValueError, match="select_on"):
        PromotionPolicy.from_params({**params, "select_on": "test"})


NOISY = {"noisy": True, "causes": ["other processes used 1.3 of 2 cores during timing"]}


@pytest.mark.parametrize("objective", ["latency_p50_ms", "latency_p95_ms", "throughput_per_s"])
def test_a_noisy_benchmark_gates_every_objective_read_from_the_timing(objective):
    reason = replace(POLICY, objective=objective).noisy_benchmark_gate(NOISY)
    assert reason is not None and "1.3 of 2 cores" in reason and objective in reason
    assert "Fix:" in reason and "benchmark.allow_noisy: true" in reason


@pytest.mark.parametrize("objective", ["size_mb", "accuracy"])
def test_a_noisy_benchmark_does_not_gate_an_objective_the_timing_does_not_decide(objective):
    assert replace(POLICY, objective=objective).noisy_benchmark_gate(NOISY) is None


def test_allow_noisy_lifts_the_gate_and_a_quiet_or_unjudged_benchmark_has_none():
    assert replace(POLICY, allow_noisy=True).noisy_benchmark_gate(NOISY) is None
    assert POLICY.noisy_benchmark_gate({"noisy": False, "causes": []}) is None
    assert POLICY.noisy_benchmark_gate(None) is None  # a report from before the benchmark judged its noise


def test_allow_noisy_comes_from_the_benchmark_params_not_the_promotion_section():
    from textcompress.config import DEFAULTS

    assert DEFAULTS["benchmark"]["allow_noisy"] is False and "allow_noisy" not in DEFAULTS["promotion"]
    assert PromotionPolicy.from_params(DEFAULTS["promotion"], allow_noisy=True).allow_noisy
    assert not PromotionPolicy.from_params(DEFAULTS["promotion"]).allow_noisy


# ---------------------------------------------------------------------------
# budget_on: bound, the paired bootstrap upper bound of the drop


BOUND = replace(POLICY, budget_on="bound")


def test_budget_on_point_judges_the_drop_and_ignores_the_bound():
    near = row(accuracy_drop=0.7, accuracy_drop_upper=1.43, drop_bound_level=0.95)
    assert POLICY.eligibility_reasons(near, GOOD_EXPORT) == []
    assert POLICY.within_budget(near) and POLICY.validation_gate(near) is None


def test_budget_on_bound_refuses_a_drop_within_budget_whose_bound_is_not_and_says_so():
    near = row(accuracy_drop=0.7, accuracy_drop_upper=1.43, drop_bound_level=0.95)
    reasons = BOUND.eligibility_reasons(near, GOOD_EXPORT)
    assert reasons == ["accuracy drop bound 1.43 points (95 % paired bootstrap) exceeds the budget of 1.0"]
    assert not BOUND.within_budget(near)
    assert BOUND.eligibility_reasons(row(accuracy_drop=0.7, accuracy_drop_upper=0.98), GOOD_EXPORT) == []
    assert not BOUND.beats({**candidate(1.0, drop=0.7), "accuracy_drop_upper": 1.43}, candidate(3.0))[0]


def test_budget_on_bound_without_a_bound_is_not_eligible():
    reasons = BOUND.eligibility_reasons(row(accuracy_drop=0.1), GOOD_EXPORT)
    assert reasons == ["no validation accuracy-drop bound to check the budget on"]


def test_budget_on_bound_judges_the_bound_of_the_select_on_split():
    policy = replace(BOUND, select_on="selection")
    chosen = row(accuracy_drop=0.5, accuracy_drop_upper=0.9, selection_accuracy_drop=0.4, selection_accuracy_drop_upper=1.6)
    reasons = policy.eligibility_reasons(chosen, GOOD_EXPORT)
    assert len(reasons) == 1 and "drop bound 1.60 points" in reasons[0] and "on the selection split" in reasons[0]
    fine = {**chosen, "selection_accuracy_drop_upper": 0.8}
    assert policy.eligibility_reasons(fine, GOOD_EXPORT) == []
    # validation still gates, on its own bound
    assert policy.validation_gate(fine) is None
    gated = policy.validation_gate({**fine, "accuracy_drop_upper": 1.2})
    assert "1.20 points" in gated and "upper bound" in gated


def test_budget_on_bound_replaces_a_champion_whose_bound_is_over_budget():
    champion = {**candidate(1.0, drop=0.5), "accuracy_drop_upper": 1.5}
    challenger = {**candidate(3.0, drop=0.5), "accuracy_drop_upper": 0.9}
    assert BOUND.beats(challenger, champion)[0]
    assert not POLICY.beats(challenger, champion)[0]


def test_an_unknown_budget_on_is_refused_naming_the_key():
    with pytest.raises(PolicyError, match="promotion.budget_on"):
        PromotionPolicy.from_params({"max_accuracy_drop": 1.0, "budget_on": "mean"})
