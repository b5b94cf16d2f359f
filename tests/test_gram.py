"""The linear heads' Gram-matrix path is the same model as the direct solver, only cheaper when wide."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from classifiers import get_head
from featcache.search import grid_search

DIRECT = {"svm": "liblinear", "logreg": "lbfgs", "gap": "lbfgs"}


def _wide(n=90, d=3000, classes=3, seed=0, maps=False):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    centers = rng.normal(size=(classes, d)) * 0.15
    X = np.maximum(rng.normal(size=(n, d)) + centers[y], 0).astype(np.float32)  # ReLU-like, non-negative
    return (X.reshape(n, d // 4, 2, 2) if maps else X), y


@pytest.mark.parametrize("head", ["svm", "logreg", "gap"])
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_gram_solver_matches_the_direct_solver(head, classes, C):
    maps = head == "gap"
    X, y = _wide(classes=classes, maps=maps, d=3000 if not maps else 800)
    Xt, _ = _wide(classes=classes, seed=1, maps=maps, d=3000 if not maps else 800)
    kw = {"max_iter": 5000, "tol": 1e-8} if head != "svm" else {}
    direct = get_head(head)(C=C, solver=DIRECT[head], **kw).fit(X, y)
    gram = get_head(head)(C=C, solver="gram", **kw).fit(X, y)
    assert gram.coef_.shape == direct.coef_.shape and gram.intercept_.shape == direct.intercept_.shape
    relative = np.linalg.norm(gram.coef_ - direct.coef_) / np.linalg.norm(direct.coef_)
    assert relative < 0.02, relative  # the same weights, up to the solvers' stopping tolerance
    if head == "svm" or C >= 1:
        # At tiny C, lbfgs stops on an almost flat intercept direction: the weights agree (above) and
        # both intercepts are optimal within its tolerance, but near-zero decisions may flip sign.
        scale = np.abs(direct.decision_function(Xt)).max()
        np.testing.assert_allclose(gram.decision_function(Xt), direct.decision_function(Xt), atol=max(2e-3 * scale, 1e-3))
        assert np.mean(gram.predict(Xt) == direct.predict(Xt)) >= 0.98


def test_auto_takes_the_gram_path_when_wide_and_the_svm_also_up_to_kernel_rows():
    from classifiers.svm import KERNEL_ROWS

    svm, logreg = get_head("svm")(), get_head("logreg")()
    assert svm._use_gram(100, 3000) and svm._use_gram(3000, 100) and svm._use_gram(KERNEL_ROWS, 100)
    assert not svm._use_gram(KERNEL_ROWS + 1, 100) and svm._use_gram(KERNEL_ROWS + 1, 10**5)
    assert logreg._use_gram(100, 3000) and not logreg._use_gram(3000, 100)
    assert not get_head("logreg")(solver="lbfgs")._use_gram(100, 3000)
    assert not get_head("svm")(solver="liblinear")._use_gram(100, 3000)


@pytest.mark.parametrize("head", ["svm", "logreg"])
def test_shared_gram_search_gives_the_generic_search_scores(head):
    X, y = _wide(n=120)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    fast = grid_search(get_head(head)(), grid, X, y, folds, progress_bar=False)
    slow = grid_search(get_head(head)(solver="gram"), {"C": grid["C"], "solver": ["gram"]}, X, y, folds, progress_bar=False)
    for k in range(4):
        assert fast.cv_results[f"split{k}_test_score"] == slow.cv_results[f"split{k}_test_score"]
    assert fast.best_params == {"C": slow.best_params["C"]}
    # the path's refit reuses its Gram matrix: the same head as fitting afresh
    fresh = get_head(head)(**fast.best_params).fit(X, y)
    np.testing.assert_allclose(fast.best_estimator.coef_, fresh.coef_, atol=1e-6 * np.abs(fresh.coef_).max())
    np.testing.assert_allclose(fast.best_estimator.intercept_, fresh.intercept_, atol=1e-6 * np.abs(fresh.coef_).max())
    # grids over more than C, and per-feature standardisation, take the generic loop
    assert get_head(head)(normalize="standard").search_path(X, y, folds, [{"C": 1.0}]) is None
    assert get_head(head)().search_path(X, y, folds, [{"C": 1.0, "tol": 1e-3}]) is None
