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
