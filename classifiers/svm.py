"""``svm``: a linear support vector machine (scikit-learn ``LinearSVC``'s objective: l2 penalty,
squared hinge, one-vs-rest, the bias a regularised constant feature as in liblinear).

With up to ``KERNEL_ROWS`` training images, or more dimensions than images, it is solved in kernel
coordinates by an exact finite Newton method (``classifiers.squared_hinge``): the same optimum as
LinearSVC's, reached exactly rather than to liblinear's tolerance. A grid search over C shares one
Gram matrix between every fold and C, solves every fold and class as one batch, walks C upwards
from each previous solution and starts each fold from the all-rows solution (which is the refit).
K is float64 to its rounding (``classifiers.linear.gram_matrix``), so K_SS + 1/(2C) stays positive
definite on unnormalised rows, whatever BLAS kernel multiplies them, unless 1/(2C) is below that
rounding (~1e-16 of K's largest entry: C ~ 1e12 on raw rows of norm 500), which fails with that reason.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.svm import LinearSVC

from classifiers.base import CLASS_WEIGHT_TEXT, GridPath, Rule, finite_weights, heads
from classifiers.linear import LinearHead, gram_matrix, one_vs_rest_targets, primal_weights
from classifiers.squared_hinge import SquaredHingeBatch

# Narrow features (images >= dimensions) take the Gram path up to this many training images: its
# n x n float64 matrix is 512 MiB there. Beyond, liblinear on the features.
KERNEL_ROWS = 8192


@heads.register("svm")
class SVMHead(LinearHead):
    """One-vs-rest linear SVM on normalised feature vectors (maps are flattened).

    ``solver``: "gram" minimises LinearSVC's objective exactly through the Gram matrix (finite Newton;
    ``max_iter`` bounds its Newton steps, ``tol``, ``dual`` and ``random_state`` are not used);
    "liblinear" fits ``LinearSVC`` on the features (to its ``tol``); "auto" takes "gram" up to
    8,192 training images or when features outnumber images, else "liblinear".
    No ``predict_proba``: LinearSVC has no probabilities. ``classifiers.scores`` turns the decision
    values into an uncalibrated confidence when one is needed.
    """

    solvers = ("auto", "liblinear", "gram")
    bias_in_kernel = True  # liblinear regularises the intercept: a constant feature 1
    _param_rules = {
        "C": Rule(float, gt=0),
        "normalize": LinearHead.normalize_rule,
        "dual": Rule(bool, options=("auto",)),
        "tol": Rule(float, gt=0),
        "max_iter": Rule(int, ge=1),
        "class_weight": Rule(dict, options=("balanced",), none=True, check=finite_weights, text=CLASS_WEIGHT_TEXT),
        "random_state": Rule(int, ge=0, none=True),
        "solver": Rule(str, options=solvers),
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
        return self.solver == "gram" or (self.solver == "auto" and (n_features > n_samples or n_samples <= KERNEL_ROWS))

    # ---- the Gram path: LinearSVC's objective in dual coefficients
    def _one_vs_rest(self, classes: np.ndarray, y_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Y, weight), each (n, problems): +1/-1 labels and per-row multipliers of C, as liblinear sets
        them: one problem (classes_[1] positive) for 2 classes, each row weighted by its class's
        weight; else one per class, its rows weighted by the class weight and all others by 1."""
        from sklearn.utils.class_weight import compute_class_weight

        k = len(classes)
        if self.class_weight == "balanced":
            cw = compute_class_weight("balanced", classes=np.arange(k), y=y_index)
        elif isinstance(self.class_weight, dict):
            cw = np.array([float(self.class_weight.get(c, 1.0)) for c in classes.tolist()])
        else:
            cw = np.ones(k)
        Y = one_vs_rest_targets(y_index, k)
        return Y, cw[y_index][:, None] if k == 2 else np.where(Y > 0, cw, 1.0)

    def _fit_gram(self, Z, y, y_index):
        A, scale = self._rows(Z)
        K, F = gram_matrix(A, scale, bias=True)
        Y, weight = self._one_vs_rest(self.classes_, y_index)
        batch = SquaredHingeBatch(K, np.ones(Y.shape, dtype=bool), Y, weight, features=F, max_newton=self.max_iter)
        batch.solve(self.C)
        return self._set_dual(A, scale, batch.beta, batch.stats["newton"])

    def _set_dual(self, A, scale, beta, n_iter):
        """coef_ = Zn^T beta (Zn = scale * A); the intercept is the weight of the constant 1, sum(beta)."""
        self.coef_ = primal_weights(A, beta, scale).astype(np.float32)
        self.intercept_ = beta.sum(axis=0).astype(np.float32)
        self.n_iter_ = int(n_iter)
        return self

    def search_path(self, X, y, folds, candidates, n_jobs=1, on_fit=None):
        """Per-fold accuracy of every C from one Gram matrix and one batch of Newton solves.

        All folds' problems and the all-rows problems (the refit) are one ``SquaredHingeBatch``. For
        each C, ascending: the all-rows problems first, from their previous-C solution; then every
        fold's, starting from the all-rows active set without that fold's rows. Every problem is
        solved to its exact optimum, so the scores are those of fitting each (fold, C) on its own.
        ``n_jobs`` is not used: the batch is one process (its products use BLAS's threads).
        """
        inputs = self._path_inputs(X, y, folds, candidates)
        if inputs is None:
            return None
        started = time.perf_counter()
        Z, Cs = inputs
        A, scale = self._rows(Z)
        classes, y_index = np.unique(np.asarray(y), return_inverse=True)
        Y1, w1 = self._one_vs_rest(classes, y_index)
        n, k, n_folds = len(y_index), Y1.shape[1], len(folds)
        K, F = gram_matrix(A, scale, bias=True)
        train = np.zeros((n, (n_folds + 1) * k), dtype=bool)
        for f, (rows, _) in enumerate(folds):
            train[rows, f * k:(f + 1) * k] = True
        train[:, n_folds * k:] = True
        batch = SquaredHingeBatch(K, train, np.tile(Y1, n_folds + 1), np.tile(w1, n_folds + 1), features=F,
                                  max_newton=self.max_iter)
        everything, per_fold = np.arange(n_folds * k, (n_folds + 1) * k), np.arange(n_folds * k)
        scores = np.empty((len(Cs), n_folds))
        fit_times = np.empty_like(scores)
        score_times = np.zeros_like(scores)
        solutions, iterations = {}, {}
        setup = time.perf_counter() - started
        for C in sorted(set(Cs)):
            started = time.perf_counter()
            newton = batch.stats["newton"]
            batch.solve(C, everything)
            whole = np.tile(batch.scores[:, everything], n_folds)
            batch.solve(C, per_fold, start_active=train[:, per_fold] & (batch.Y[:, per_fold] * whole < 1),
                        start_beta=np.tile(batch.beta[:, everything], n_folds), start_from=np.tile(everything, n_folds))
            solutions[C] = batch.beta[:, everything].copy()
            iterations[C] = batch.stats["newton"] - newton
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            fold_scores = []
            for f, (_, valid) in enumerate(folds):
                s = batch.scores[valid, f * k:(f + 1) * k]
                predicted = (s[:, 0] > 0).astype(np.intp) if k == 1 else s.argmax(axis=1)
                fold_scores.append(float(np.mean(predicted == y_index[valid])))
            score_time = (time.perf_counter() - started) / n_folds
            for i in np.flatnonzero(np.asarray(Cs) == C):
                scores[i] = fold_scores
                fit_times[i] = (elapsed + setup / len(set(Cs))) / n_folds
                score_times[i] = score_time
            if on_fit:
                for _ in range(n_folds * int(np.sum(np.asarray(Cs) == C))):
                    on_fit()

        def solve(head, params):
            C = float(params.get("C", self.C))
            return head._set_dual(A, scale, solutions[C], iterations[C])

        return GridPath(scores, fit_times, score_times, self._refit_from(X, y, solve))
