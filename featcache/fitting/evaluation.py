"""Scoring a fitted head: per image (with views: the head's outputs over an image's views averaged, or
view 0 only), the test-set figures and the grid-edge warning a run records.

Kept apart from writing runs (``runs``) so the figures can be computed, tested and reused (sweeps,
benches) without touching a run directory.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from classifiers import scores
from classifiers.base import proba_from_decision
from featcache.config.choices import AT_TEST
from featcache.config.views import ViewsError
from featcache.fitting.runs import TestScores


def decisions(estimator, X):
    """What test-time averaging averages: ``predict_proba`` where the head has one, else the
    decision values (n,) or (n, classes)."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64), True
    return np.asarray(estimator.decision_function(X), dtype=np.float64), False


def aggregate(estimator, X, n_views: int, how: str = "mean"):
    """(labels, confidences) per image of rows grouped by image (``n_views`` consecutive rows each).

    ``how="mean"``: average the head's probabilities (or decision values) over the views, then take
    the best class; ``"first"``: view 0 only (no test-time augmentation). With one view both are
    ``classifiers.scores``.
    """
    if how not in AT_TEST:
        raise ViewsError(f"unknown --views-at-test {how!r}: use mean or first")
    n_rows = len(X)
    if n_views < 1 or n_rows % n_views:
        raise ViewsError(f"{n_rows} rows are not whole images of {n_views} views each")
    if n_views == 1 or how == "first":
        return scores(estimator, X[::n_views])
    out, is_proba = decisions(estimator, X)
    out = out.reshape((n_rows // n_views, n_views) + out.shape[1:]).mean(axis=1)
    proba = out if is_proba else proba_from_decision(out)
    best = proba.argmax(axis=1)
    return np.asarray(estimator.classes_)[best], proba[np.arange(len(best)), best]


class ImageScorer:
    """A scikit-learn scorer ``(estimator, X, y) -> accuracy`` per image, for CV folds whose rows
    come whole images at a time, views in order (what ``fit`` passes a grid search)."""

    def __init__(self, n_views: int, how: str = "mean"):
        self.n_views, self.how = n_views, how

    def __call__(self, estimator, X, y) -> float:
        labels, _ = aggregate(estimator, X, self.n_views, self.how)
        y = np.asarray(y).reshape(-1, self.n_views)
        if (y != y[:, :1]).any():
            raise ViewsError("rows of one image carry different labels: the rows are not grouped by image")
        return float(np.mean(labels == y[:, 0]))


def score_test(estimator, X_test: np.ndarray, y_test: np.ndarray, class_names: list[str], n_views: int = 1,
               views_at_test: str = "mean"):
    """(TestScores, predicted labels, confidences) of ``estimator`` per test image.

    With ``n_views`` > 1 the rows come whole images at a time (views in order) and each image is
    scored once, by ``aggregate`` (``views_at_test``: mean over its views, or view 0 only).
    """
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
