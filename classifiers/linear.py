"""Shared code of the linear heads (svm, logreg, gap, ridge): normalisation, the Gram-matrix path, the decision.

A linear head fits a linear model on normalised features, then keeps only its ``coef_`` and
``intercept_`` (float32). Decisions are computed here with numpy, the same way in memory and after
``load_head``, so a reloaded head gives bit-identical results.

Wide features (more dimensions than training images, e.g. 2,000 x 25,088 flattened maps) are solved
through the Gram matrix K = Z Z^T. With an L2 penalty the optimal weights lie in the span of the
training rows (w = Z^T beta), so the model depends on the data only through K: logreg fits the same
scikit-learn model on rows of a factor L of K (K = L L^T, n x n instead of n x d), which gives
exactly the same model (z.w = (L w_L)_i and |w|^2 = |w_L|^2); the svm solves LinearSVC's objective
in the dual coefficients beta directly (``classifiers.squared_hinge``). LinearSVC regularises its
bias (liblinear appends a constant feature 1), so the svm's kernel is K + 1 and it fits no separate
intercept; LogisticRegression does not, so logreg keeps its intercept. A grid search computes K
once for every fold and C (``search_path``) and refits the best candidate from it too. K is
accumulated in float64 (``gram_matrix`` says why and what it costs).
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, solve_triangular
from sklearn.base import clone

from classifiers.base import GridPath, Head, Rule

NORMALIZE = ("l2", "standard", "none")


def gram_factor(K: np.ndarray) -> np.ndarray:
    """A lower-triangular L with K = L L^T (a small jitter makes a semi-definite K usable)."""
    jitter = 1e-10 * float(np.trace(K)) / len(K)
    for _ in range(6):
        try:
            L, _ = cho_factor(K + jitter * np.eye(len(K)), lower=True, check_finite=False)
            return np.tril(L)
        except LinAlgError:
            jitter = max(jitter * 100, 1e-12)
    raise LinAlgError("Gram matrix is not positive definite")


GRAM_BLOCK_BYTES = 64 * 2**20  # float64 column block of the wide Gram product


def gram_matrix(Z: np.ndarray, scale: np.ndarray | None, bias: bool,
                centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, F) for the rows X = scale * Z - centre: K = X X^T (+ 1 with a regularised bias) in float64,
    and for narrow Z the float64 features F = [X, 1] with K = F F^T exactly (products through F are
    cheaper than through K).

    Precision: float64 throughout. Z is float32, so each product z_ik z_jk is exact in float64 and
    an entry of K is off by float64 rounding of its sum only (~p * 1e-16 of |x_i| |x_j| at worst).
    A float32 product (the Gram path until issue 20) is off by ~1e-7 * sqrt(p) of |x_i| |x_j|: on
    rows of large norm (features * 50 + 7, raw ReLU maps with normalize='none') that error reached
    ~1 while the svm adds only 1 / (2C) to the diagonal, so K_SS + D came out indefinite or not
    depending on the BLAS kernel's summation order. Wide Z is therefore multiplied in float64 column
    blocks (no float64 copy of the maps): ~1.5-2.5x the time of the float32 product (measured at
    4,000 x 62,720: 5.5-8 s instead of 2.5-4 s, on 2 busy cores).
    ``centre`` (p,) is subtracted before the product (ridge's centred rows), so the centring does
    not cancel large entries after it.
    """
    n, p = Z.shape
    if 2 * (p + bias) < n:
        F = np.empty((n, p + bias))
        F[:, :p] = Z
        if scale is not None:
            F[:, :p] *= scale[:, None]
        if centre is not None:
            F[:, :p] -= centre
        if bias:
            F[:, p] = 1.0
        return F @ F.T, F
    K = np.zeros((n, n))
    step = max(1, GRAM_BLOCK_BYTES // (8 * n))
    for start in range(0, p, step):
        block = Z[:, start:start + step].astype(np.float64)
        if scale is not None:
            block *= scale[:, None]
        if centre is not None:
            block -= centre[start:start + step]
        K += block @ block.T
    if bias:
        K += 1.0
    return K, None


def primal_weights(Z: np.ndarray, beta: np.ndarray, scale: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """w = Zn^T beta = Z^T (scale * beta) as (k, d) float64. Up to 2^25 entries of Z in float64, over
    column blocks; a larger (wide) Z in float32, ~10x faster there (4,000 x 62,720: 0.4 s instead of
    3.9 s) and within ~2e-6 of the largest weight (measured), as close as K's own float32 products."""
    if scale is not None:
        beta = beta * scale[:, None]
    if Z.size > 2**25:
        return (beta.T.astype(np.float32) @ Z).astype(np.float64)
    out = np.empty((beta.shape[1], Z.shape[1]))
    for start in range(0, Z.shape[1], chunk):
        out[:, start:start + chunk] = beta.T @ Z[:, start:start + chunk].astype(np.float64)
    return out



def _row_norms(Z: np.ndarray) -> np.ndarray:
    """float64 L2 norm of each row, all-zero rows given norm 1 (they stay zero when divided)."""
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64))
    norms[norms == 0] = 1.0
    return norms


def one_vs_rest_targets(y_index: np.ndarray, k: int) -> np.ndarray:
    """+-1 targets of the one-vs-rest problems: one column for 2 classes (class 1 positive), else k."""
    if k == 2:
        return np.where(y_index == 1, 1.0, -1.0)[:, None]
    return np.where(y_index[:, None] == np.arange(k), 1.0, -1.0)

class LinearHead(Head):
    """Normalise (``normalize``: 'l2' rows, 'standard' features, or 'none'), then ``X @ coef_.T + b``."""

    _state_arrays: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "mean_", "scale_")
    _state_scalars: ClassVar[tuple[str, ...]] = ("n_iter_",)
    normalize_rule: ClassVar[Rule] = Rule(str, options=NORMALIZE)
    solvers: ClassVar[tuple[str, ...]] = ("auto", "gram")  # each head adds its direct solver's name
    bias_in_kernel: ClassVar[bool] = False  # True when the model regularises its intercept (liblinear)

    def _make_model(self, **overrides):  # pragma: no cover - every linear head overrides
        """The unfitted scikit-learn linear classifier to train on the normalised features."""
        raise NotImplementedError

    def _gram_model(self, **overrides):
        """The same classifier, set up to train on rows of the Gram factor."""
        return self._make_model(fit_intercept=not self.bias_in_kernel, **overrides)

    # ---- normalisation
    def _fit_normalizer(self, Z: np.ndarray) -> None:
        self.mean_ = self.scale_ = None
        if self.normalize == "standard":
            mean = Z.mean(axis=0, dtype=np.float64).astype(np.float32)
            var = np.mean(np.square(Z - mean), axis=0, dtype=np.float64)
            std = np.sqrt(var)
            std[std == 0] = 1.0
            # divide by sqrt(d) too, so that rows have norm ~1 and C means what it means for 'l2'
            self.mean_ = mean
            self.scale_ = (std * np.sqrt(Z.shape[1])).astype(np.float32)

    def _normalized(self, Z: np.ndarray) -> np.ndarray:
        if self.normalize == "l2":
            return Z / _row_norms(Z).astype(np.float32)[:, None]
        if self.normalize == "standard":
            return (Z - self.mean_) / self.scale_
        return Z

    def _rows(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(A, scale) with the normalised rows equal to scale * A (scale None: A itself), so that row
        normalisation can be applied to products of A instead of to a copy of A."""
        if self.normalize == "l2":
            return Z, 1.0 / _row_norms(Z)
        return self._normalized(Z), None

    def _kernel(self, Zn: np.ndarray) -> np.ndarray:
        """Zn Zn^T (+ 1 for a regularised bias) in float64 (see ``gram_matrix`` for its precision)."""
        return gram_matrix(Zn, None, self.bias_in_kernel)[0]

    def _use_gram(self, n_samples: int, n_features: int) -> bool:
        return self.solver == "gram" or (self.solver == "auto" and n_features > n_samples)

    # ---- fit / decide
    def fit(self, X, y):
        """Validate, normalise, fit directly or through the Gram matrix, keep float32 weights; return self."""
        Z, y, y_index = self._validate_fit(X, y)
        self._fit_normalizer(Z)
        if not self._use_gram(*Z.shape):
            return self._set_model(self._make_model().fit(self._normalized(Z), y))
        return self._fit_gram(Z, y, y_index)

    def _fit_gram(self, Z, y, y_index, K=None):
        """Fit the model on rows of a factor of K (= Zn Zn^T) and map its weights back to features."""
        Zn = self._normalized(Z)
        L = gram_factor(self._kernel(Zn) if K is None else K)
        return self._set_from_factor(self._gram_model().fit(L, y), L, Zn)

    def _set_from_factor(self, model, L, Zn):
        # w = Z^T beta with beta = L^-T w_L; a bias inside the kernel is the weight of the constant 1.
        beta = solve_triangular(L, model.coef_.T, lower=True, trans="T", check_finite=False)
        model.coef_ = primal_weights(Zn, beta)
        if self.bias_in_kernel:
            model.intercept_ = beta.sum(axis=0)
        return self._set_model(model)

    def _set_model(self, model):
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(np.broadcast_to(model.intercept_, (len(self.coef_),)), dtype=np.float32)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Linear scores: shape (n,) for 2 classes (> 0 means ``classes_[1]``), else (n, n_classes)."""
        scores = self._normalized(self._validate_X(X)) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    # ---- grid search over C sharing one Gram matrix
    def _path_inputs(self, X, y, folds, candidates):
        """(Z, Cs) when a shared-Gram path applies, else None: a grid over C only, row-wise
        normalisation ('l2' or 'none': no per-fold statistics) and the Gram solver for these shapes.
        Z is what the model sees before normalisation."""
        if any(k != "C" for c in candidates for k in c) or self.normalize == "standard":
            return None
        self._check_params()
        probe = clone(self)  # _features may record fitted shapes; keep them off this template
        Z = probe._features(probe._check_input(np.asarray(X, dtype=np.float32)), fit=True)
        if not self._use_gram(min(len(t) for t, _ in folds), Z.shape[1]):
            return None
        for c in candidates:
            clone(self).set_params(**c)._check_params()
        return Z, [float(c.get("C", self.C)) for c in candidates]

    def _refit_from(self, X, y, solve):
        """refit(params) for a GridPath: validate X and y as fit does, then ``solve(head, params)``."""

        def refit(params):
            head = clone(self).set_params(**params)
            Z, _, _ = head._validate_fit(X, y)
            head._fit_normalizer(Z)
            return solve(head, params)

        return refit

    def search_path(self, X, y, folds, candidates, n_jobs=1, on_fit=None):
        """Per-fold accuracy of every candidate, sharing one Gram matrix; None when it does not apply.

        Each fold factorises its block of K once for every C. (Warm starts along C were measured: lbfgs
        stops within its tolerance elsewhere, which moved CV scores by a few images for ~15% less CPU,
        so every fit starts cold, as in the generic loop.) Returns a ``GridPath`` whose refit
        factorises the whole K instead of computing it again.
        """
        from joblib import Parallel, delayed
        from threadpoolctl import threadpool_limits

        inputs = self._path_inputs(X, y, folds, candidates)
        if inputs is None:
            return None
        Z, Cs = inputs
        Zn = self._normalized(Z)
        K = self._kernel(Zn)
        y = np.asarray(y)

        def fold_path(train, valid):
            with threadpool_limits(1):  # small factorisations: BLAS threads cost more than they give
                start = time.perf_counter()
                L = gram_factor(K[np.ix_(train, train)])
                phi_valid = solve_triangular(L, K[np.ix_(valid, train)].T, lower=True, check_finite=False).T
                setup = (time.perf_counter() - start) / len(Cs)
                out = [None] * len(Cs)
                for i in range(len(Cs)):
                    start = time.perf_counter()
                    model = self._gram_model(C=Cs[i]).fit(L, y[train])
                    fit_time = time.perf_counter() - start + setup
                    start = time.perf_counter()
                    out[i] = (float(np.mean(model.predict(phi_valid) == y[valid])), fit_time, time.perf_counter() - start)
                    if on_fit:
                        on_fit()
                return out

        results = np.array(Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fold_path)(t, v) for t, v in folds))
        refit = self._refit_from(X, y, lambda head, params: head._fit_gram(Z, y, None, K))
        return GridPath(results[:, :, 0].T, results[:, :, 1].T, results[:, :, 2].T, refit)
