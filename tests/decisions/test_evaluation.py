"""Tests for textcompress.decisions.evaluation: accuracy, macro-F1, the bootstrap interval, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from textcompress.decisions.evaluation import bootstrap_accuracy_ci, evaluate_predictions, macro_f1

# Three classes, six rows:
#   labels    = 0 0 0 1 1 2
#   predicted = 0 0 1 1 2 2
#   correct   = ✓ ✓ ✗ ✓ ✗ ✓  -> accuracy 4/6
# class 0: tp 2, fp 0, fn 1 -> F1 = 2·2 / (2·2 + 0 + 1) = 4/5
# class 1: tp 1, fp 1, fn 1 -> F1 = 2 / (2 + 1 + 1)     = 1/2
# class 2: tp 1, fp 1, fn 0 -> F1 = 2 / (2 + 1 + 0)     = 2/3
# macro-F1 = (4/5 + 1/2 + 2/3) / 3 = 59/90
LABELS = np.array([0, 0, 0, 1, 1, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2])


def test_accuracy_and_macro_f1_on_a_hand_computed_example():
    result = evaluate_predictions(PREDICTED, LABELS, num_classes=3, bootstrap=200)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx(59 / 90)
    assert macro_f1(PREDICTED, LABELS, 3) == pytest.approx(59 / 90)
    assert result["rows"] == 6


def test_macro_f1_counts_zero_for_a_class_never_predicted():
    labels = np.array([0, 1, 1, 0])
    predicted = np.array([0, 0, 0, 0])
    # class 0: tp 2, fp 2, fn 0 -> F1 = 4/6; class 1 is never predicted -> 0; mean = 1/3
    assert macro_f1(predicted, labels, 2) == pytest.approx(1 / 3)


def test_macro_f1_is_one_for_perfect_predictions():
    labels = np.array([0, 1, 2, 2, 1])
    assert macro_f1(labels.copy(), labels, 3) == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_accuracy_and_narrows_with_more_rows():
    few = np.array([1.0, 1.0, 1.0, 0.0] * 10)  # 40 rows, accuracy 0.75
    many = np.array([1.0, 1.0, 1.0, 0.0] * 1000)  # 4000 rows, accuracy 0.75
    lo_few, hi_few = bootstrap_accuracy_ci(few, samples=500)
    lo_many, hi_many = bootstrap_accuracy_ci(many, samples=500)
    assert 0.0 <= lo_few <= 0.75 <= hi_few <= 1.0
    assert lo_many <= 0.75 <= hi_many
    assert lo_few < hi_few
    assert hi_many - lo_many < (hi_few - lo_few) / 3  # ~sqrt(100) = 10x narrower in theory


def test_bootstrap_interval_is_seeded():
    correct = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    assert bootstrap_accuracy_ci(correct, samples=300, seed=5) == bootstrap_accuracy_ci(correct, samples=300, seed=5)


def test_evaluate_predictions_interval_contains_its_accuracy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    predicted = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    result = evaluate_predictions(predicted, labels, 2, bootstrap=500)
    lo, hi = result["accuracy_ci"]
    assert lo <= result["accuracy"] <= hi


def test_label_agreement_is_the_share_of_equal_predictions_with_the_reference():
    # PREDICTED = 0 0 1 1 2 2
    reference = np.array([0, 1, 1, 1, 2, 0])  # differs at rows 1 and 5 -> agreement 4/6
    assert evaluate_predictions(PREDICTED, LABELS, 3, reference, bootstrap=100)["label_agreement"] == pytest.approx(4 / 6)
    assert evaluate_predictions(PREDICTED, LABELS, 3, PREDICTED.copy(), bootstrap=100)["label_agreement"] == 1.0


def test_label_agreement_is_none_without_a_reference():
    assert evaluate_predictions(PREDICTED, LABELS, 3, bootstrap=100)["label_agreement"] is None


def test_mcnemar_counts_discordant_rows_and_gives_the_exact_p_value():
    from textcompress.decisions.evaluation import mcnemar_test

    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0, 1, 1], dtype=bool)
    result = mcnemar_test(a, b)
    assert result["only_a_correct"] == 5 and result["only_b_correct"] == 1 and result["rows"] == 10
    # two-sided exact binomial, n = 6 discordant, k = 1: 2 * (1 + 6) / 64
    assert result["p_value"] == pytest.approx(2 * 7 / 64)
    assert mcnemar_test(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        mcnemar_test(a, a[:5])


def test_f1_is_the_positive_labels_as_glue_scores_mrpc_and_absent_beyond_two_classes():
    labels, predicted = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    # label 1: tp 2, fp 1, fn 1 -> F1 = 4 / 6
    assert evaluate_predictions(predicted, labels, num_classes=2, bootstrap=50)["f1"] == pytest.approx(2 / 3)
    assert evaluate_predictions(PREDICTED, LABELS, num_classes=3, bootstrap=50)["f1"] is None


# ---------------------------------------------------------------------------
# The paired bootstrap bound of the accuracy drop


def paired(rows: int, teacher_only: int, candidate_only: int, both: int):
    """Correctness of a teacher and a candidate on `rows` rows: right together on `both`, each alone
    on its own count, wrong together on the rest."""
    teacher = np.zeros(rows)
    candidate = np.zeros(rows)
    teacher[:both] = candidate[:both] = 1
    teacher[both:both + teacher_only] = 1
    candidate[both + teacher_only:both + teacher_only + candidate_only] = 1
    return candidate, teacher


def test_the_bound_is_above_the_point_drop_and_tightens_with_more_rows():
    from textcompress.decisions.evaluation import paired_drop_bound

    few = paired(100, teacher_only=4, candidate_only=2, both=80)  # drop 2 points
    many = paired(10000, teacher_only=400, candidate_only=200, both=8000)  # drop 2 points too
    bound_few, bound_many = paired_drop_bound(*few, samples=2000), paired_drop_bound(*many, samples=2000)
    assert bound_few > bound_many > 0.02
    assert bound_few > 0.03  # 6 discordant rows of 100: the point drop of 2 is far from the bound
    assert bound_many < 0.025


def test_the_bound_is_paired_shared_errors_do_not_widen_it():
    from textcompress.decisions.evaluation import paired_drop_bound

    # Both right on 500 rows, both wrong on 400: the drop only depends on the 100 rows they disagree on.
    candidate, teacher = paired(1000, teacher_only=60, candidate_only=40, both=500)
    bound = paired_drop_bound(candidate, teacher, samples=4000)
    # Resampled unpaired (two independent accuracies of 1000 rows near 0.55), the one-sided 95 %
    # spread of the difference is about 1.645 * sqrt(2 * 0.55 * 0.45 / 1000) = 3.7 points; paired it
    # is about 1.645 * sqrt(100 / 1000 - 0.02 ** 2) / sqrt(1000) = 1.6 points.
    assert 0.02 < bound < 0.02 + 0.025


def test_the_bound_rises_with_its_level_is_seeded_and_is_zero_against_itself():
    from textcompress.decisions.evaluation import paired_drop_bound

    candidate, teacher = paired(200, teacher_only=10, candidate_only=4, both=150)
    assert paired_drop_bound(candidate, teacher, level=0.99) > paired_drop_bound(candidate, teacher, level=0.9)
    assert paired_drop_bound(candidate, teacher, seed=3) == paired_drop_bound(candidate, teacher, seed=3)
    assert paired_drop_bound(teacher, teacher) == 0.0


def test_the_bound_needs_the_same_rows():
    from textcompress.decisions.evaluation import paired_drop_bound

    with pytest.raises(ValueError, match="same rows"):
        paired_drop_bound(np.ones(5), np.ones(4))


def test_with_the_teachers_predictions_the_result_gives_the_drop_and_its_bound():
    # PREDICTED = 0 0 1 1 2 2 against LABELS 0 0 0 1 1 2: 4 of 6 right; the teacher gets all 6 right.
    result = evaluate_predictions(PREDICTED, LABELS, 3, LABELS.copy(), bootstrap=500, bound_level=0.9)
    assert result["accuracy_drop"] == pytest.approx(2 / 6)
    assert result["accuracy_drop"] <= result["accuracy_drop_upper"] <= 1.0
    assert result["accuracy_drop_upper"] > evaluate_predictions(PREDICTED, LABELS, 3, LABELS.copy(), bootstrap=500,
                                                                bound_level=0.6)["accuracy_drop_upper"]
    alone = evaluate_predictions(PREDICTED, LABELS, 3, bootstrap=100)
    assert alone["accuracy_drop"] is None and alone["accuracy_drop_upper"] is None
