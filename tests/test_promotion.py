"""Tests for textcompress.promotion: eligibility, the challenger pick and beats()."""

from __future__ import annotations

import pytest

from textcompress.promotion import beats, eligibility_reasons, pick_challenger

POLICY = {"objective": "latency_p50_ms", "max_accuracy_drop": 1.0}
GOOD_EXPORT = {"parity_max_abs_diff": 2e-6, "parity_ok": True, "parity_tolerance": 1e-4}


def row(name="distil-2", status="ok", accuracy_drop=0.5, reasons=None, **extra):
    return {"name": name, "status": status, "accuracy_drop": accuracy_drop, "reasons": reasons or [], **extra}


def test_a_faithful_candidate_within_budget_has_no_reasons():
    assert eligibility_reasons(row(), GOOD_EXPORT, POLICY) == []


def test_a_drop_exactly_at_the_budget_is_allowed():
    assert eligibility_reasons(row(accuracy_drop=1.0), GOOD_EXPORT, POLICY) == []


def test_parity_failure_makes_a_candidate_ineligible():
    export = {"parity_max_abs_diff": 0.3, "parity_ok": False, "parity_tolerance": 1e-4}
    reasons = eligibility_reasons(row(), export, POLICY)
    assert len(reasons) == 1 and "parity" in reasons[0] and "0.3" in reasons[0]


def test_a_missing_export_report_counts_as_a_parity_failure():
    reasons = eligibility_reasons(row(), {}, POLICY)
    assert len(reasons) == 1 and "parity" in reasons[0]


def test_agreement_gate_failure_makes_a_quantized_candidate_ineligible():
    export = {**GOOD_EXPORT, "label_agreement_with_fp32": 0.95, "agreement_gate": 0.98, "agreement_ok": False}
    reasons = eligibility_reasons(row(), export, POLICY)
    assert len(reasons) == 1 and "agreement" in reasons[0] and "0.9500" in reasons[0] and "0.98" in reasons[0]


def test_passing_the_agreement_gate_adds_no_reason():
    export = {**GOOD_EXPORT, "label_agreement_with_fp32": 0.99, "agreement_gate": 0.98, "agreement_ok": True}
    assert eligibility_reasons(row(), export, POLICY) == []


def test_over_the_accuracy_budget_makes_a_candidate_ineligible():
    reasons = eligibility_reasons(row(accuracy_drop=1.5), GOOD_EXPORT, POLICY)
    assert len(reasons) == 1 and "accuracy drop 1.50" in reasons[0]


def test_the_teacher_is_never_eligible():
    reasons = eligibility_reasons(row(name="teacher", accuracy_drop=0.0), GOOD_EXPORT, POLICY, teacher_name="teacher")
    assert len(reasons) == 1 and "teacher" in reasons[0]


def test_a_failed_row_reports_its_failure_only():
    reasons = eligibility_reasons(row(status="failed", reasons=["compress crashed"], accuracy_drop=None), {}, POLICY)
    assert reasons == ["failed: compress crashed"]


def test_several_problems_give_several_reasons():
    export = {"parity_max_abs_diff": 0.3, "parity_ok": False, "parity_tolerance": 1e-4}
    assert len(eligibility_reasons(row(accuracy_drop=3.0), export, POLICY)) == 2


# ---------------------------------------------------------------------------
# pick_challenger

ROWS = [
    {"name": "teacher", "eligible": False, "latency_p50_ms": 9.0, "accuracy": 0.92, "size_mb": 90.0},
    {"name": "fastest-but-inaccurate", "eligible": False, "latency_p50_ms": 1.0, "accuracy": 0.80, "size_mb": 10.0},
    {"name": "int8-dynamic", "eligible": True, "latency_p50_ms": 4.0, "accuracy": 0.915, "size_mb": 23.0},
    {"name": "distil-3", "eligible": True, "latency_p50_ms": 3.0, "accuracy": 0.912, "size_mb": 45.0},
    {"name": "not-benchmarked", "eligible": True, "latency_p50_ms": None, "accuracy": 0.919, "size_mb": 40.0},
]


def test_pick_challenger_picks_the_lowest_p50_among_eligible():
    assert pick_challenger(ROWS, POLICY) == "distil-3"


def test_pick_challenger_follows_other_objectives():
    assert pick_challenger(ROWS, {**POLICY, "objective": "size_mb"}) == "int8-dynamic"
    assert pick_challenger(ROWS, {**POLICY, "objective": "accuracy"}) == "not-benchmarked"


def test_pick_challenger_is_none_when_nothing_is_eligible():
    assert pick_challenger([{**r, "eligible": False} for r in ROWS], POLICY) is None
    assert pick_challenger([], POLICY) is None


def test_pick_challenger_rejects_an_unknown_objective():
    with pytest.raises(ValueError, match="fastest"):
        pick_challenger(ROWS, {**POLICY, "objective": "fastest"})


# ---------------------------------------------------------------------------
# beats


def candidate(p50, drop=0.2, accuracy=0.9):
    return {"latency_p50_ms": p50, "accuracy_drop": drop, "accuracy": accuracy}


def test_a_faster_challenger_beats_the_champion():
    wins, why = beats(candidate(2.0), candidate(3.0), POLICY)
    assert wins and "latency_p50_ms" in why


@pytest.mark.parametrize("p50", [3.0, 4.0])
def test_an_equal_or_slower_challenger_does_not_beat_the_champion(p50):
    assert beats(candidate(p50), candidate(3.0), POLICY)[0] is False


def test_a_challenger_over_budget_never_wins():
    wins, why = beats(candidate(1.0, drop=1.5), candidate(3.0), POLICY)
    assert not wins and "budget" in why


def test_a_champion_over_budget_loses_to_any_challenger_within_it():
    wins, why = beats(candidate(5.0, drop=0.5), candidate(3.0, drop=2.0), POLICY)
    assert wins and "champion" in why


def test_beats_with_a_maximised_objective():
    policy = {**POLICY, "objective": "accuracy"}
    assert beats(candidate(5.0, accuracy=0.91), candidate(3.0, accuracy=0.90), policy)[0] is True
    assert beats(candidate(1.0, accuracy=0.89), candidate(3.0, accuracy=0.90), policy)[0] is False


def test_a_quantized_candidate_slower_than_its_fp32_parent_is_ineligible():
    reasons = eligibility_reasons(row(latency_p50_ms=5.0, parent_latency_p50_ms=4.0), GOOD_EXPORT, POLICY)
    assert len(reasons) == 1 and "not below its fp32 parent" in reasons[0]
    assert eligibility_reasons(row(latency_p50_ms=3.0, parent_latency_p50_ms=4.0), GOOD_EXPORT, POLICY) == []


def significance_policy(**extra):
    return {**POLICY, "require_significance": True, "significance_level": 0.05, **extra}


def test_a_significantly_less_accurate_challenger_loses_when_significance_is_required():
    test = {"only_a_correct": 3, "only_b_correct": 30, "p_value": 1e-6, "rows": 872}
    challenger, champion = candidate(2.0, drop=0.5), candidate(3.0, drop=0.1)
    wins, why = beats(challenger, champion, significance_policy(), test)
    assert not wins and "significantly less accurate" in why
    # without the requirement the faster challenger wins
    assert beats(challenger, champion, POLICY, test)[0]
    # a difference that is not significant does not block it
    assert beats(challenger, champion, significance_policy(), {**test, "only_a_correct": 12, "only_b_correct": 15, "p_value": 0.7})[0]


def test_under_the_accuracy_objective_the_gain_must_be_significant():
    policy = significance_policy(objective="accuracy")
    challenger, champion = candidate(2.0, drop=0.1, accuracy=0.91), candidate(3.0, drop=0.3, accuracy=0.90)
    wins, why = beats(challenger, champion, policy, {"only_a_correct": 10, "only_b_correct": 8, "p_value": 0.81, "rows": 872})
    assert not wins and "not significant" in why
    assert beats(challenger, champion, policy, {"only_a_correct": 40, "only_b_correct": 8, "p_value": 1e-5, "rows": 872})[0]


def test_choosing_on_the_selection_split_checks_the_budget_there():
    policy = {**POLICY, "select_on": "selection"}
    chosen = row(accuracy_drop=3.0, selection_accuracy_drop=0.4)  # over on validation, fine on selection
    assert eligibility_reasons(chosen, GOOD_EXPORT, policy) == []
    over = eligibility_reasons(row(accuracy_drop=0.2, selection_accuracy_drop=2.0), GOOD_EXPORT, policy)
    assert len(over) == 1 and "on the selection split" in over[0]
    assert "no selection accuracy" in eligibility_reasons(row(), GOOD_EXPORT, policy)[0]
