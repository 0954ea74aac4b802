"""Quality of an exported model: accuracy, macro-F1, F1 of the positive label, a bootstrap interval, agreement, the
accuracy drop against the teacher with its paired bootstrap bound, and the paired test that compares two models on
the same rows."""

from __future__ import annotations

import math

import numpy as np

from textcompress.errors import PolicyError


def macro_f1(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def positive_f1(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float | None:
    """F1 of label id 1, as GLUE scores MRPC and QQP; None beyond two classes."""
    if num_classes != 2:
        return None
    tp = np.sum((predicted == 1) & (labels == 1))
    return 0.0 if tp == 0 else float(2 * tp / (2 * tp + np.sum(predicted != labels)))


def bootstrap_accuracy_ci(correct: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of accuracy over the evaluation rows."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    means = correct[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def paired_drop_bound(candidate_correct, teacher_correct, samples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> float:
    """One-sided upper bound, at `level`, of teacher accuracy minus candidate accuracy on the same
    rows (a fraction: 0.012 is 1.2 points). Rows are resampled as pairs, so what the two models
    get right together cancels and only their disagreements move the bound."""
    candidate = np.asarray(candidate_correct, dtype=np.float64)
    teacher = np.asarray(teacher_correct, dtype=np.float64)
    if candidate.shape != teacher.shape or candidate.ndim != 1 or not candidate.size:
        raise PolicyError(f"paired bound needs the same rows: {candidate.shape} vs {teacher.shape}",
                          "compare predictions on the same evaluation rows")
    differences = teacher - candidate
    if not differences.any():  # identical on every row (the teacher against itself): no spread to bound
        return 0.0
    rng = np.random.default_rng(seed)
    drops = differences[rng.integers(0, differences.size, size=(samples, differences.size))].mean(axis=1)
    return float(np.quantile(drops, level))


def evaluate_predictions(predicted: np.ndarray, labels: np.ndarray, num_classes: int,
                         reference: np.ndarray | None = None, bootstrap: int = 1000, bound_level: float = 0.95) -> dict:
    """Quality of `predicted`; with the teacher's predictions as `reference`, also the label agreement,
    the accuracy drop against the teacher (a fraction) and its paired bootstrap upper bound at `bound_level`."""
    correct = (predicted == labels).astype(np.float64)
    teacher_correct = None if reference is None else (reference == labels).astype(np.float64)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(predicted, labels, num_classes),
        "f1": positive_f1(predicted, labels, num_classes),
        "accuracy_ci": bootstrap_accuracy_ci(correct, bootstrap),
        "label_agreement": None if reference is None else float((predicted == reference).mean()),
        "accuracy_drop": None if reference is None else float(teacher_correct.mean() - correct.mean()),
        "accuracy_drop_upper": None if reference is None else paired_drop_bound(correct, teacher_correct, bootstrap,
                                                                                 level=bound_level),
        "rows": int(len(labels)),
    }


def mcnemar_test(correct_a, correct_b) -> dict:
    """Exact McNemar test on paired correctness: only rows where the two models disagree count;
    under the null hypothesis each such row favours either model with probability 1/2."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise PolicyError(f"paired test needs the same rows: {a.shape} vs {b.shape}",
                          "compare predictions on the same validation rows")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    # Two-sided: twice the smaller tail of Binomial(n, 1/2), capped at 1.
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": min(1.0, 2 * tail), "rows": int(a.size)}
