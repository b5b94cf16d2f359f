"""The fast linear heads give what the slow, obvious computation gives.

- The svm's Newton solver reaches LinearSVC's optimum (same objective, same decisions).
- Warm starts along the C path, starts from another problem's active set, and conjugate gradients
  instead of Cholesky all end at the same optimum as a cold, direct solve.
- A grid search through ``search_path`` gives the generic loop's per-fold scores, and its refit is
  the head fitted afresh.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from classifiers import get_head
from classifiers.squared_hinge import SquaredHingeBatch
from featcache.fitting.search import grid_search


def relu_features(n=240, d=60, classes=3, seed=0, spread=0.5):
    """Non-negative, overlapping classes: deep-feature-like, neither separable nor trivial."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, d)) * spread
    X = np.maximum(rng.normal(size=(n, d)) + centers[y], 0).astype(np.float32)
    return X, y


def objective(coef, intercept, Xn, y, C, classes):
    """LinearSVC's objective summed over its one-vs-rest problems (bias as a regularised feature)."""
    coef, intercept = np.atleast_2d(coef).astype(np.float64), np.atleast_1d(intercept).astype(np.float64)
    positives = [classes[1]] if len(classes) == 2 else classes
    total = 0.0
    for w, b, c in zip(coef, intercept, positives):
        margin = np.maximum(0.0, 1.0 - np.where(y == c, 1.0, -1.0) * (Xn @ w + b))
        total += 0.5 * (w @ w + b * b) + C * np.sum(margin ** 2)
    return total


def reference_svc(Xn, y, C, class_weight=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # only a converged liblinear is a reference
        return LinearSVC(C=C, tol=1e-10, max_iter=10**6, class_weight=class_weight).fit(Xn, y)


# --------------------------------------------------------------------------- the svm is LinearSVC's objective
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("shape", [(240, 60), (90, 600)], ids=["narrow", "wide"])
@pytest.mark.parametrize("C", [0.01, 1.0, 30.0])
def test_svm_decisions_equal_linearsvc(classes, shape, C):
    X, y = relu_features(*shape, classes=classes)
    Xt, _ = relu_features(*shape, classes=classes, seed=1)
    ours = get_head("svm")(C=C, solver="gram").fit(X, y)
    ref = reference_svc(normalize(X), y, C)
    scale = np.abs(ref.decision_function(normalize(Xt))).max()
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(normalize(Xt)), atol=1e-5 * scale)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-5 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-5 * np.abs(ref.coef_).max())


@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 1: 0.5}])
@pytest.mark.parametrize("classes", [2, 3])
def test_svm_class_weights_are_liblinears(class_weight, classes):
    """liblinear weights C per row: by its class for 2 classes; in one-vs-rest, positives only."""
    X, y = relu_features(180, 40, classes=classes, seed=2)
    ours = get_head("svm")(C=2.0, class_weight=class_weight, solver="gram").fit(X, y)
    ref = reference_svc(normalize(X), y, 2.0, class_weight)
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(normalize(X)), atol=1e-5)


def test_svm_reaches_the_optimum_where_liblinear_stops_short():
    """Unscaled features at large C: liblinear runs out of iterations; the Newton solver's objective
    is no higher than liblinear's after a million iterations."""
    X, y = relu_features(150, 30, classes=2, seed=3)
    X = X * 40 + 5
    ours = get_head("svm")(C=100.0, normalize="none", solver="gram").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        short = LinearSVC(C=100.0, max_iter=1000).fit(X, y)
    ours_objective = objective(ours.coef_, ours.intercept_, X.astype(np.float64), y, 100.0, [0, 1])
    assert ours_objective <= objective(short.coef_, short.intercept_, X.astype(np.float64), y, 100.0, [0, 1]) * (1 + 1e-6)


# --------------------------------------------------------------------------- shortcuts end where cold solves end
def _batch(X, y, folds, **kw):
    Zn = normalize(X).astype(np.float64)
    F = np.hstack([Zn, np.ones((len(Zn), 1))])
    classes = np.unique(y)
    Y1 = np.where(y[:, None] == classes, 1.0, -1.0)
    train = np.zeros((len(y), (len(folds) + 1) * len(classes)), dtype=bool)
    for f, (rows, _) in enumerate(folds):
        train[rows, f * len(classes):(f + 1) * len(classes)] = True
    train[:, len(folds) * len(classes):] = True
    return SquaredHingeBatch(F @ F.T, train, np.tile(Y1, len(folds) + 1), **kw)


@pytest.fixture(scope="module")
def fold_data():
    X, y = relu_features(300, 40, classes=3, seed=4)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    return X, y, folds


def test_warm_started_c_path_equals_cold_solves(fold_data):
    X, y, folds = fold_data
    warm = _batch(X, y, folds)
    for C in [0.01, 0.3, 10.0, 300.0]:
        warm.solve(C)
        cold = _batch(X, y, folds)
        cold.solve(C)
        np.testing.assert_allclose(warm.scores, cold.scores, atol=1e-7 * np.abs(cold.scores).max())
        np.testing.assert_allclose(warm.beta, cold.beta, atol=1e-7 * np.abs(cold.beta).max())


def test_fold_problems_started_from_the_all_rows_active_set_end_at_their_own_optimum(fold_data):
    X, y, folds = fold_data
    k = 3
    everything, per_fold = np.arange(len(folds) * k, (len(folds) + 1) * k), np.arange(len(folds) * k)
    shared = _batch(X, y, folds)
    shared.solve(3.0, everything)
    start = shared.train[:, per_fold] & (shared.Y[:, per_fold] * np.tile(shared.scores[:, everything], len(folds)) < 1)
    shared.solve(3.0, per_fold, start_active=start, start_beta=np.tile(shared.beta[:, everything], len(folds)))
    cold = _batch(X, y, folds)
    cold.solve(3.0)
    np.testing.assert_allclose(shared.scores, cold.scores, atol=1e-7 * np.abs(cold.scores).max())


@pytest.mark.parametrize("C", [0.01, 1.0, 50.0])
def test_conjugate_gradients_and_cholesky_reach_the_same_optimum(fold_data, monkeypatch, C):
    X, y, folds = fold_data
    direct = _batch(X, y, folds)
    direct.solve(C)
    monkeypatch.setattr(SquaredHingeBatch, "_max_direct", lambda self, d, sizes: np.zeros(d.shape[1]))
    iterative = _batch(X, y, folds, rank=8)
    iterative.solve(C)
    assert iterative.stats["cholesky"] == 0 and iterative.stats["cg_iterations"] > 0
    np.testing.assert_allclose(iterative.scores, direct.scores, atol=1e-5 * np.abs(direct.scores).max())



def test_factor_updates_solve_nearby_sets_exactly():
    """Dropping and adding rows to a factorised active set gives the fresh Cholesky solution."""
    from classifiers.squared_hinge import _Factor

    X, _ = relu_features(200, 30, seed=10)
    Zn = normalize(X).astype(np.float64)
    K = Zn @ Zn.T + 1.0
    rng = np.random.default_rng(0)
    S = np.sort(rng.choice(200, 120, replace=False))
    inv_d = np.full(200, 0.05)
    factor = _Factor(K, S, inv_d[S])
    outside = np.setdiff1d(np.arange(200), S)
    for dropped, added in [(3, 0), (0, 4), (5, 6), (12, 1)]:
        new = np.sort(np.concatenate([np.delete(S, rng.choice(len(S), dropped, replace=False)),
                                      rng.choice(outside, added, replace=False)]))
        y = rng.choice([-1.0, 1.0], len(new))
        x = factor.solve_near(K, new, y, inv_d[new])
        assert x is not None
        np.testing.assert_allclose(x, np.linalg.solve(K[np.ix_(new, new)] + np.diag(inv_d[new]), y), rtol=1e-9, atol=1e-12)
    far = np.sort(rng.choice(outside, 60, replace=False))
    assert factor.solve_near(K, far, np.ones(60), inv_d[far]) is None  # a new factorisation is cheaper

# --------------------------------------------------------------------------- the search path
@pytest.mark.parametrize("shape", [(240, 60), (120, 900)], ids=["narrow", "wide"])
def test_svm_search_path_gives_the_generic_loops_scores_and_refit(shape):
    X, y = relu_features(*shape, classes=3, seed=5)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    grid = {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}
    fast = grid_search(get_head("svm")(), grid, X, y, folds, progress_bar=False)
    slow = grid_search(get_head("svm")(), {**grid, "solver": ["gram"]}, X, y, folds, progress_bar=False)  # no path
    for f in range(len(folds)):
        assert fast.cv_results[f"split{f}_test_score"] == slow.cv_results[f"split{f}_test_score"]
    fresh = get_head("svm")(C=fast.best_params["C"]).fit(X, y)
    np.testing.assert_allclose(fast.best_estimator.coef_, fresh.coef_, atol=1e-5 * np.abs(fresh.coef_).max())
    np.testing.assert_allclose(fast.best_estimator.intercept_, fresh.intercept_, atol=1e-5 * np.abs(fresh.coef_).max())
    assert fast.best_estimator.get_params() == fresh.get_params()


def test_svm_search_path_scores_are_liblinears_within_its_tolerance():
    """Against GridSearchCV's per-fold LinearSVC on the same normalised rows: the same objective, so
    the same validation accuracy up to liblinear stopping early (at most one image per fold here)."""
    from sklearn.model_selection import GridSearchCV

    X, y = relu_features(400, 50, classes=4, seed=6)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    fast = grid_search(get_head("svm")(), grid, X, y, folds, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = GridSearchCV(LinearSVC(tol=1e-8, max_iter=10**5), grid, cv=folds).fit(normalize(X), y)
    for f, (_, valid) in enumerate(folds):
        diff = np.abs(np.array(fast.cv_results[f"split{f}_test_score"]) - ref.cv_results_[f"split{f}_test_score"])
        assert diff.max() <= 1 / len(valid) + 1e-12


def test_search_path_declines_what_it_does_not_cover(fold_data):
    X, y, folds = fold_data
    assert get_head("svm")(normalize="standard").search_path(X, y, folds, [{"C": 1.0}]) is None
    assert get_head("svm")().search_path(X, y, folds, [{"C": 1.0, "tol": 1e-3}]) is None
    assert get_head("svm")(solver="liblinear").search_path(X, y, folds, [{"C": 1.0}]) is None


# --------------------------------------------------------------------------- ridge: closed form, exact k-fold
@pytest.mark.parametrize("shape", [(240, 60), (90, 600)], ids=["narrow", "wide"])
@pytest.mark.parametrize("classes", [2, 4])
def test_ridge_is_ridgeclassifier_on_the_normalised_rows(shape, classes):
    from sklearn.linear_model import RidgeClassifier

    X, y = relu_features(*shape, classes=classes, seed=7)
    for alpha in (0.01, 1.0, 100.0):
        ours = get_head("ridge")(alpha=alpha).fit(X, y)
        ref = RidgeClassifier(alpha=alpha).fit(normalize(X), y)
        scale = np.abs(ref.decision_function(normalize(X))).max()
        np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(normalize(X)), atol=1e-5 * scale)


@pytest.mark.parametrize("shape", [(240, 60), (120, 900)], ids=["narrow", "wide"])
@pytest.mark.parametrize("classes", [2, 3])
def test_ridge_kfold_scores_from_one_decomposition_equal_explicit_refits(shape, classes):
    X, y = relu_features(*shape, classes=classes, seed=8)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=1).split(X, y))
    grid = {"alpha": [0.001, 0.03, 1.0, 30.0]}
    fast = grid_search(get_head("ridge")(), grid, X, y, folds, progress_bar=False)
    explicit = grid_search(get_head("ridge")(), {**grid, "normalize": ["l2"]}, X, y, folds, progress_bar=False)  # no path
    for f in range(len(folds)):
        assert fast.cv_results[f"split{f}_test_score"] == explicit.cv_results[f"split{f}_test_score"]
    fresh = get_head("ridge")(**fast.best_params).fit(X, y)
    np.testing.assert_allclose(fast.best_estimator.coef_, fresh.coef_, atol=1e-5 * np.abs(fresh.coef_).max())
    np.testing.assert_allclose(fast.best_estimator.intercept_, fresh.intercept_, atol=1e-5 * np.abs(fresh.coef_).max())


def test_ridge_leave_one_out_is_the_one_row_case():
    """Folds of one row each: the path's scores are leave-one-out, equal to n explicit refits."""
    X, y = relu_features(40, 12, classes=2, seed=9)
    folds = [(np.delete(np.arange(40), i), np.array([i])) for i in range(40)]
    path = get_head("ridge")().search_path(X, y, folds, [{"alpha": 0.1}, {"alpha": 3.0}])
    for i, alpha in enumerate((0.1, 3.0)):
        explicit = [float(get_head("ridge")(alpha=alpha).fit(X[t], y[t]).predict(X[v])[0] == y[v][0]) for t, v in folds]
        assert list(path.scores[i]) == explicit


def test_svm_search_path_with_conjugate_gradients_gives_the_same_scores(monkeypatch):
    """The inexact-Newton conjugate-gradient route (large active sets, many images) ends where Cholesky does."""
    X, y = relu_features(240, 60, classes=3, seed=11)
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    grid = {"C": [0.01, 1.0, 100.0]}
    direct = grid_search(get_head("svm")(), grid, X, y, folds, progress_bar=False)
    monkeypatch.setattr(SquaredHingeBatch, "_max_direct", lambda self, d, sizes: np.zeros(d.shape[1]))
    iterative = grid_search(get_head("svm")(), grid, X, y, folds, progress_bar=False)
    for f in range(len(folds)):
        assert iterative.cv_results[f"split{f}_test_score"] == direct.cv_results[f"split{f}_test_score"]
    np.testing.assert_allclose(iterative.best_estimator.coef_, direct.best_estimator.coef_,
                               atol=1e-4 * np.abs(direct.best_estimator.coef_).max())
