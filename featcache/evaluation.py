"""Scoring a fitted head: the test-set figures and the grid-edge warning a run records.

Kept apart from writing runs (``runs``) so the figures can be computed, tested and reused (sweeps,
benches) without touching a run directory.
"""

from __future__ import annotations

import numpy as np

from classifiers import scores

from .runs import TestScores


def score_test(estimator, X_test: np.ndarray, y_test: np.ndarray, class_names: list[str]):
    """(TestScores, predicted labels, confidences) of ``estimator`` on the test rows."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if not len(X_test):
        empty = TestScores(n=0, accuracy=float("nan"), per_class={}, confusion_matrix=[])
        return empty, np.array([], dtype=int), np.array([])
    predicted, confidence = scores(estimator, X_test)
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_test, predicted, labels=labels, zero_division=0)
    test = TestScores(
        n=int(len(y_test)),
        accuracy=float(accuracy_score(y_test, predicted)),
        per_class={class_names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                   for i in labels},
        confusion_matrix=confusion_matrix(y_test, predicted, labels=labels).tolist(),
    )
    return test, predicted, confidence


def edge_params(grid: dict[str, list], table: dict, best_index: int) -> list[str]:
    """Searched numeric parameters whose best value is the smallest or largest tried and beats
    its inner neighbour (a plateau reaching the edge is no sign that the optimum lies outside)."""
    best = table["params"][best_index]
    mean = np.asarray(table["mean_test_score"])
    edges = []
    for name, values in grid.items():
        numbers = sorted({v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if len(numbers) < 3 or best.get(name) not in (numbers[0], numbers[-1]):
            continue
        inner = numbers[1] if best[name] == numbers[0] else numbers[-2]
        same_others = [i for i, p in enumerate(table["params"])
                       if p.get(name) == inner and all(p.get(k) == v for k, v in best.items() if k != name)]
        if same_others and mean[best_index] > mean[same_others[0]] + 1e-3:
            edges.append(name)
    return edges
