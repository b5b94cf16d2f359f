"""``svm``: a linear support vector machine (scikit-learn ``LinearSVC``, l2 penalty, squared hinge).

Wide features (more dimensions than training images, e.g. 2,000 x 25,088 flattened maps) are
solved through the Gram matrix: the same LinearSVC objective with its bias (liblinear appends a
constant feature 1 and regularises its weight, i.e. the kernel K + 1) depends on the data only
through K, so liblinear runs on an n x n factor of K instead of the n x d data. That is exact, not
an approximation, and far cheaper when d >> n. A grid search reuses one K for every fold and every
C (``search_path``): the matrix is computed once, each fold factorises its block once.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, solve_triangular
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from classifiers.base import Rule, heads
from classifiers.linear import LinearHead

SOLVERS = ("auto", "liblinear", "gram")


def gram_factor(K: np.ndarray) -> np.ndarray:
    """A lower-triangular L with K = L L^T (a small jitter makes a semi-definite K usable)."""
    jitter = 1e-10 * float(np.trace(K)) / len(K)
    for _ in range(4):
        try:
            L, _ = cho_factor(K + jitter * np.eye(len(K)), lower=True, check_finite=False)
            return np.tril(L)
        except LinAlgError:
            jitter = max(jitter * 100, 1e-12)
    raise LinAlgError("Gram matrix is not positive definite")


@heads.register("svm")
class SVMHead(LinearHead):
    """One-vs-rest linear SVM on normalised feature vectors (maps are flattened).

    ``solver``: "liblinear" fits LinearSVC on the features; "gram" fits the same objective through
    the Gram matrix; "auto" takes "gram" when features outnumber training images.
    No ``predict_proba``: LinearSVC has no probabilities. ``classifiers.scores`` turns the decision
    values into an uncalibrated confidence when one is needed.
    """

    _param_rules = {
        "C": Rule(float, gt=0),
        "normalize": LinearHead.normalize_rule,
        "dual": Rule(bool, options=("auto",)),
        "tol": Rule(float, gt=0),
        "max_iter": Rule(int, ge=1),
        "class_weight": Rule(dict, options=("balanced",), none=True),
        "random_state": Rule(int, ge=0, none=True),
        "solver": Rule(str, options=SOLVERS),
    }
    default_grid = {"C": [0.01, 0.1, 1, 10, 100]}

    def __init__(self, C=1.0, normalize="l2", dual="auto", tol=1e-4, max_iter=2000, class_weight=None,
                 random_state=0, solver="auto"):
        self.C = C
        self.normalize = normalize
        self.dual = dual
        self.tol = tol
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.random_state = random_state
        self.solver = solver

    def _make_model(self, **overrides):
        kwargs = dict(penalty="l2", loss="squared_hinge", C=self.C, dual=self.dual, tol=self.tol, max_iter=self.max_iter,
                      class_weight=self.class_weight, random_state=self.random_state)
        return LinearSVC(**{**kwargs, **overrides})

    def _use_gram(self, n_samples: int, n_features: int) -> bool:
        return self.solver == "gram" or (self.solver == "auto" and n_features > n_samples)

    def fit(self, X, y):
        """Validate, normalise, solve (liblinear or through the Gram matrix); return self."""
        Z, y, _ = self._validate_fit(X, y)
        if not self._use_gram(*Z.shape):
            self._fit_normalizer(Z)
            return self._set_model(self._make_model().fit(self._normalized(Z), y))
        self._fit_normalizer(Z)
        Zn = self._normalized(Z)
        L = gram_factor(_kernel(Zn, Zn))
        model = self._make_model(fit_intercept=False, dual=True).fit(L, y)
        # w lives in span{z_i}: w = Z^T beta with beta = L^-T w_L; the bias weight is sum(beta).
        beta = solve_triangular(L, model.coef_.T, lower=True, trans="T", check_finite=False)
        model.coef_ = (Zn.T.astype(np.float64) @ beta).T
        model.intercept_ = beta.sum(axis=0)
        return self._set_model(model)

    def _set_model(self, model):
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(model.intercept_, dtype=np.float32)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def search_path(self, X, y, folds, candidates, n_jobs=1, on_fit=None):
        """Per-fold accuracy of every candidate, sharing one Gram matrix; None when it does not apply.

        Applies to wide features, row-wise normalisation ('l2' or 'none', which need no per-fold
        statistics) and grids over C only. Returns (scores, fit_times, score_times).
        """
        from joblib import Parallel, delayed
        from sklearn.base import clone

        others = [{k: v for k, v in c.items() if k != "C"} for c in candidates]
        n_train = min(len(train) for train, _ in folds)
        Xf = np.asarray(X).reshape(len(X), -1)
        if any(others) or self.normalize == "standard" or not self._use_gram(n_train, Xf.shape[1]):
            return None
        self._check_params()
        for c in candidates:
            clone(self).set_params(**c)._check_params()
        Zn = self._normalized(Xf.astype(np.float32, copy=False))
        K = _kernel(Zn, Zn)
        Cs = [c.get("C", self.C) for c in candidates]

        def one_fold(train, valid):
            with threadpool_limits(1):  # small factorisations: BLAS threads cost more than they give
                return fold_path(train, valid)

        def fold_path(train, valid):
            start = time.perf_counter()
            L = gram_factor(K[np.ix_(train, train)])
            Phi_valid = solve_triangular(L, K[np.ix_(valid, train)].T, lower=True, check_finite=False).T
            setup = time.perf_counter() - start
            out = []
            for C in Cs:
                start = time.perf_counter()
                model = self._make_model(C=C, fit_intercept=False, dual=True).fit(L, y[train])
                fit_time = time.perf_counter() - start + setup / len(Cs)
                start = time.perf_counter()
                score = float(np.mean(model.predict(Phi_valid) == y[valid]))
                out.append((score, fit_time, time.perf_counter() - start))
                if on_fit:
                    on_fit()
            return out

        results = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(one_fold)(tr, va) for tr, va in folds)
        arr = np.array(results)  # (folds, candidates, 3)
        return arr[:, :, 0].T, arr[:, :, 1].T, arr[:, :, 2].T


def _kernel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A B^T + 1 in float64 (float32 products, float64 accumulation of the result)."""
    return (A @ B.T).astype(np.float64) + 1.0
