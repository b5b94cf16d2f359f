"""The linear heads' Gram-matrix path is the same model as the direct solver, only cheaper when wide."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from classifiers import get_head
from featcache.fitting.search import grid_search

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


# --------------------------------------------------------------------------- badly scaled rows (issue 20)
def _raw(n=180, d=512, classes=3, seed=1):
    """Non-centred rows of large norm (|x|^2 ~ 1e6), as raw ReLU maps under normalize='none' are."""
    X, y = _wide(n=n, d=d, classes=classes, seed=seed)
    return X * 50 + 7, y


def test_gram_matrix_is_exact_to_float64_rounding_on_large_rows():
    """The float32 product was off by ~1 here (|K| ~ 1e6): more than the 1/(2C) an svm adds to K_SS."""
    from classifiers.linear import gram_matrix

    X, _ = _raw()
    exact = X.astype(np.float64) @ X.astype(np.float64).T
    K, _ = gram_matrix(X, None, bias=False)
    assert np.abs(K - exact).max() <= 1e-12 * np.abs(exact).max()
    mean = X.mean(axis=0, dtype=np.float64)
    centred = (X - mean) @ (X - mean).T
    Kc, _ = gram_matrix(X, None, bias=False, centre=mean)
    assert np.abs(Kc - centred).max() <= 1e-12 * np.abs(exact).max()
    # logreg's kernel and the svm's (with its regularised bias) are this one
    assert np.abs(get_head("logreg")()._kernel(X) - exact).max() <= 1e-12 * np.abs(exact).max()
    assert np.abs(get_head("svm")()._kernel(X) - (exact + 1)).max() <= 1e-12 * np.abs(exact).max()


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_svm_on_raw_large_rows_reaches_liblinears_optimum(C):
    """K_SS + 1/(2C) stays positive definite on rows of norm ~1e3 at every C of the default grid, on
    any BLAS kernel, and the solution is LinearSVC's (the objectives agree to 1e-7)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    X, y = _raw()
    ours = get_head("svm")(C=C, normalize="none", solver="gram").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ref = LinearSVC(C=C, tol=1e-10, max_iter=10**6).fit(X.astype(np.float64), y)
    Y = np.where(y[:, None] == np.arange(3), 1.0, -1.0)

    def objective(coef, intercept):
        w, b = coef.astype(np.float64), intercept.astype(np.float64)
        margin = np.maximum(0.0, 1.0 - Y * (X.astype(np.float64) @ w.T + b))
        return 0.5 * (np.sum(w * w, axis=1) + b * b) + C * np.sum(margin ** 2, axis=0)

    np.testing.assert_allclose(objective(ours.coef_, ours.intercept_), objective(ref.coef_, ref.intercept_), rtol=1e-6)
    assert np.mean(ours.predict(X) == ref.predict(X)) == 1.0


@pytest.mark.parametrize("alpha", [1e-12, 0.001, 1.0])
def test_ridge_on_raw_large_wide_rows_is_ridgeclassifier(alpha):
    """The wide (dual) fit factorises X_c X_c^T + alpha I: centred before the product, in float64. At
    alpha = 1e-12 that matrix is singular to rounding (X_c X_c^T has a null direction at ~ -1e-10):
    solved without that direction, exactly."""
    from sklearn.linear_model import RidgeClassifier
    from threadpoolctl import threadpool_limits

    X, y = _raw(d=600)
    ours = get_head("ridge")(alpha=alpha, normalize="none").fit(X, y)
    with threadpool_limits(1):  # a small SVD: on a busy 2-core machine BLAS threads only wait for each other
        ref = RidgeClassifier(alpha=alpha, solver="svd").fit(X.astype(np.float64), y)
    scale = np.abs(ref.decision_function(X)).max()
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X.astype(np.float64)), atol=1e-5 * scale)


def test_svm_at_a_c_beyond_float64_precision_says_so():
    """1/(2C) below K's float64 rounding: refused with the cause and the fix, not 'not positive semi-definite'."""
    from numpy.linalg import LinAlgError

    X, y = _raw(d=120)
    get_head("svm")(C=1e9, normalize="none", solver="gram").fit(X, y)  # still within precision
    with pytest.raises(LinAlgError, match=r"singular to float64 precision \(C up to 1e\+13 .*use a smaller C, or normalised rows"):
        get_head("svm")(C=1e13, normalize="none", solver="gram").fit(X, y)
