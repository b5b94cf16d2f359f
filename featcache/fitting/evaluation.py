"""Scoring a fitted head: the test-set figures and the grid-edge warning a run records.

Kept apart from writing runs (``runs``) so the figures can be computed, tested and reused (sweeps,
benches) without touching a run directory.
"""

from __future__ import annotations

import numpy as np

from featcache.fitting.runs import TestScores
from featcache.config.views import AT_TEST, aggregate


def score_test(estimator, X_test: np.ndarray, y_test: np.ndarray, class_names: list[str], n_views: int = 1,
               views_at_test: str = "mean"):
    """(TestScores, predicted labels, confidences) of ``estimator`` per test image.

    With ``n_views`` > 1 the rows come whole images at a time (views in order) and each image is
    scored once, by ``views.aggregate`` (``views_at_test``: mean over its views, or view 0 only).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if not len(X_test):
        empty = TestScores(n=0, accuracy=float("nan"), per_class={}, confusion_matrix=[])
        return empty, np.array([], dtype=int), np.array([])
    predicted, confidence = aggregate(estimator, X_test, n_views, views_at_test)
    y_test = np.asarray(y_test)[::n_views]
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


def view_accuracies(estimator, X_test: np.ndarray, y_test: np.ndarray, n_views: int,
                    known: dict[str, float] | None = None) -> dict[str, float]:
    """Test accuracy per image with each ``--views-at-test`` rule (what the report compares);
    ``known``: accuracies already computed (the run's own rule), not scored again."""
    y = np.asarray(y_test)[::n_views]
    known = known or {}
    return {how: known[how] if how in known else float(np.mean(aggregate(estimator, X_test, n_views, how)[0] == y))
            if len(y) else float("nan") for how in AT_TEST}


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
