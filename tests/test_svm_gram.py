"""The svm head's Gram-matrix solver is the same LinearSVC, only cheaper on wide features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from classifiers import get_head
from featcache.search import grid_search


def _wide(n=90, d=3000, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    centers = rng.normal(size=(classes, d)) * 0.15
    X = np.maximum(rng.normal(size=(n, d)) + centers[y], 0).astype(np.float32)  # ReLU-like, non-negative
    return X, y


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_gram_solver_matches_liblinear_on_the_features(classes, C):
    X, y = _wide(classes=classes)
    Xt, yt = _wide(classes=classes, seed=1)
    lib = get_head("svm")(C=C, solver="liblinear").fit(X, y)
    gram = get_head("svm")(C=C, solver="gram").fit(X, y)
    assert gram.coef_.shape == lib.coef_.shape and gram.intercept_.shape == lib.intercept_.shape
    np.testing.assert_allclose(gram.decision_function(Xt), lib.decision_function(Xt), rtol=1e-3, atol=1e-4)
    assert np.array_equal(gram.predict(Xt), lib.predict(Xt))


def test_auto_takes_the_gram_path_only_when_features_outnumber_images():
    head = get_head("svm")()
    assert head._use_gram(100, 3000) and not head._use_gram(3000, 100)


def test_shared_gram_search_gives_the_generic_search_scores():
    X, y = _wide(n=120)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    fast = grid_search(get_head("svm")(), grid, X, y, folds, progress_bar=False)
    slow = grid_search(get_head("svm")(solver="liblinear"), grid, X, y, folds, progress_bar=False)
    for k in range(4):
        assert fast.cv_results[f"split{k}_test_score"] == slow.cv_results[f"split{k}_test_score"]
    assert fast.best_params == slow.best_params
    # grids over more than C, and per-feature standardisation, take the generic loop
    assert get_head("svm")(normalize="standard").search_path(X, y, folds, [{"C": 1.0}]) is None
    assert get_head("svm")().search_path(X, y, folds, [{"C": 1.0, "tol": 1e-3}]) is None
