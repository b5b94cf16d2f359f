"""``ridge``: one-vs-rest least squares (scikit-learn ``RidgeClassifier``'s model), in closed form.

Targets are +1/-1 per class (one column for 2 classes, ``classes_[1]`` positive), the intercept is
not penalised, and ``alpha`` weighs the L2 penalty. Every fit is a linear solve, and a grid search
over alpha costs one eigendecomposition, so the default grid can afford 11 values (0.001..100).
With X_c the rows centred on their mean and H the hat matrix of the fit on all rows,
H = 11^T/n + X_c (X_c^T X_c + alpha I)^-1 X_c^T, and for every penalised least-squares fit the
residuals of the fit without rows V are exactly

    y_V - yhat_V^(-V) = (I - H_VV)^-1 (y_V - yhat_V)      (Woodbury; LOO is the case |V| = 1).

From X_c^T X_c = U diag(lam) U^T (narrow features) or X_c X_c^T (wide ones), H_VV costs |V|^2 r
for any alpha, so every fold and every alpha are scored exactly, without fitting any of them.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from classifiers.base import GridPath, Rule, heads
from classifiers.linear import LinearHead, gram_matrix, one_vs_rest_targets, primal_weights
from classifiers.threads import BlasThreads


@heads.register("ridge")
class RidgeHead(LinearHead):
    """One-vs-rest ridge regression on +1/-1 targets, on normalised feature vectors (maps are flattened).

    Same model as ``sklearn.linear_model.RidgeClassifier(alpha)`` on the normalised rows. No
    ``predict_proba`` (least-squares scores are not probabilities; ``classifiers.scores`` turns
    the decision values into an uncalibrated confidence when one is needed).
    """

    _param_rules = {
        "alpha": Rule(float, gt=0),
        "normalize": LinearHead.normalize_rule,
    }
    default_grid = {"alpha": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]}

    def __init__(self, alpha=1.0, normalize="l2"):
        self.alpha = alpha
        self.normalize = normalize

    def fit(self, X, y):
        """Validate, normalise, solve the penalised least squares exactly; return self."""
        Z, _, y_index = self._validate_fit(X, y)
        self._fit_normalizer(Z)
        A, scale = self._rows(Z)  # the normalised rows are scale * A
        mean = _mean(A, scale)
        Y = self._targets(y_index)
        Yc = Y - Y.mean(axis=0)
        n, p = A.shape
        if p <= n:  # (X_c^T X_c + alpha I) W = X_c^T Y_c, p x p
            Xc = _scaled(A, scale) - mean
            W = _ridge_solve(Xc.T @ Xc, self.alpha, Xc.T @ Yc)
        else:  # dual: W = X_c^T (X_c X_c^T + alpha I)^-1 Y_c, n x n
            W = _weights(A, scale, mean, _ridge_solve(_centred_gram(A, scale, mean), self.alpha, Yc))
        return self._set_weights(W, Y.mean(axis=0) - mean @ W)

    def _targets(self, y_index: np.ndarray) -> np.ndarray:
        return one_vs_rest_targets(y_index, len(self.classes_))

    def _set_weights(self, W, intercept):
        self.coef_ = np.ascontiguousarray(W.T, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(intercept, dtype=np.float32)
        self.n_iter_ = 1
        return self

    def search_path(self, X, y, folds, candidates, n_jobs=1, on_fit=None):
        """Exact per-fold accuracy of every alpha from one eigendecomposition (see the module notes);
        None for grids over anything but alpha, or per-fold statistics (normalize='standard')."""
        if any(k != "alpha" for c in candidates for k in c) or self.normalize == "standard":
            return None
        self._check_params()
        for c in candidates:
            self.__class__(**{**self.get_params(), **c})._check_params()
        started = time.perf_counter()
        probe = self.__class__(**self.get_params())
        Z = probe._features(probe._check_input(np.asarray(X, dtype=np.float32)), fit=True)
        A, scale = self._rows(Z)
        classes, y_index = np.unique(np.asarray(y), return_inverse=True)
        probe.classes_ = classes
        Y = probe._targets(y_index)
        Yc = Y - Y.mean(axis=0)
        n, p = A.shape
        mean = _mean(A, scale)
        blas = BlasThreads()
        if p <= n:
            Xc = _scaled(A, scale) - mean
            with blas.one():
                lam, U = np.linalg.eigh(Xc.T @ Xc)
                Q = Xc @ U  # Q^T Q = diag(lam), Q Q^T = X_c X_c^T
        else:
            K = _centred_gram(A, scale, mean)
            with blas.one():
                lam, V = np.linalg.eigh(K)
            lam = np.maximum(lam, 0.0)
            Q = V * np.sqrt(lam)
        QtY = Q.T @ Yc
        alphas = [float(c.get("alpha", self.alpha)) for c in candidates]
        setup = time.perf_counter() - started
        scores = np.empty((len(alphas), len(folds)))
        fit_times, score_times = np.empty_like(scores), np.zeros_like(scores)
        valid_rows = [Q[valid] for _, valid in folds]
        for i, alpha in enumerate(alphas):
            started = time.perf_counter()
            shrink = 1.0 / (lam + alpha)
            fitted = Y.mean(axis=0) + Q @ (shrink[:, None] * QtY)
            for f, (_, valid) in enumerate(folds):
                Qv = valid_rows[f]
                with blas.one():
                    H = (Qv * shrink) @ Qv.T + 1.0 / n
                    heldout = Y[valid] - np.linalg.solve(np.eye(len(valid)) - H, Y[valid] - fitted[valid])
                predicted = (heldout[:, 0] > 0).astype(np.intp) if Y.shape[1] == 1 else heldout.argmax(axis=1)
                scores[i, f] = float(np.mean(predicted == y_index[valid]))
                if on_fit:
                    on_fit()
            fit_times[i] = (time.perf_counter() - started + setup / len(alphas)) / len(folds)

        def solve(head, params):
            shrink = 1.0 / (lam + float(params.get("alpha", self.alpha)))
            if p <= n:
                W = U @ (shrink[:, None] * QtY)  # (X_c^T X_c + alpha I)^-1 X_c^T Y_c
            else:
                # beta = (K_c + alpha I)^-1 Y_c; on the null space of K_c it is Y_c / alpha, which X_c^T drops
                W = _weights(A, scale, mean, V @ (shrink[:, None] * (V.T @ Yc)))
            return head._set_weights(W, Y.mean(axis=0) - mean @ W)

        return GridPath(scores, fit_times, score_times, self._refit_from(X, y, solve))


def _ridge_solve(G: np.ndarray, alpha: float, B: np.ndarray) -> np.ndarray:
    """(G + alpha I)^-1 B for G = X_c^T X_c with B = X_c^T Y_c (p <= n), or G = X_c X_c^T (the dual, whose
    result only enters through X_c^T), float64; by Cholesky.

    G is singular (centring alone removes a dimension), and its rounding (~1e-16 of its largest
    eigenvalue) can leave eigenvalues below -alpha when alpha is that small. Then: G's
    eigendecomposition without the directions at rounding level. That is exact, not a
    regularisation: B has no component along G's null space (primal) and X_c^T removes it (dual);
    kept, their rounding divided by alpha would swamp the weights."""
    M = G.copy()
    M.flat[:: len(M) + 1] += alpha
    try:
        return cho_solve(cho_factor(M, lower=True, check_finite=False), B, check_finite=False)
    except LinAlgError:
        lam, V = np.linalg.eigh(G)
        keep = lam > len(G) * np.finfo(np.float64).eps * max(lam[-1], 0.0)
        V = V[:, keep]
        return V @ ((V.T @ B) / (lam[keep] + alpha)[:, None])


def _scaled(A: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """The normalised rows scale * A in float64 (narrow features only: a float64 copy)."""
    return A.astype(np.float64) if scale is None else A * scale[:, None]


def _mean(A: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """Mean of the normalised rows, float64, without a copy of A."""
    weights = np.full(len(A), 1.0 / len(A)) if scale is None else scale / len(A)
    return primal_weights(A, weights[:, None])[0]


def _centred_gram(A: np.ndarray, scale: np.ndarray | None, mean: np.ndarray) -> np.ndarray:
    """X_c X_c^T in float64, X_c the normalised rows minus their mean, centred before the product
    (``gram_matrix``): centring after it would subtract entries of |x|^2 size and keep their error."""
    return gram_matrix(A, scale, bias=False, centre=mean)[0]


def _weights(A: np.ndarray, scale: np.ndarray | None, mean: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """X_c^T beta as (d, k) float64 (see ``primal_weights`` for the precision of wide ones)."""
    return primal_weights(A, beta, scale).T - np.outer(mean, beta.sum(axis=0))
