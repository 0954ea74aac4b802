"""Quality of an exported model: accuracy, macro-F1, a bootstrap interval, agreement."""

from __future__ import annotations

import numpy as np


def macro_f1(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def bootstrap_accuracy_ci(correct: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of accuracy over the evaluation rows."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    means = correct[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def evaluate_predictions(predicted: np.ndarray, labels: np.ndarray, num_classes: int,
                         reference: np.ndarray | None = None, bootstrap: int = 1000) -> dict:
    correct = (predicted == labels).astype(np.float64)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(predicted, labels, num_classes),
        "accuracy_ci": bootstrap_accuracy_ci(correct, bootstrap),
        "label_agreement": None if reference is None else float((predicted == reference).mean()),
        "rows": int(len(labels)),
    }
