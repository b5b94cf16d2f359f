"""Shared code of the linear heads (svm, logreg, gap): row/feature normalisation and the decision.

A linear head fits a scikit-learn linear model on normalised features, then keeps only its
``coef_`` and ``intercept_`` (float32). Decisions are computed here with numpy, the same way in
memory and after ``load_head``, so a reloaded head gives bit-identical results.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from classifiers.base import Head, Rule

NORMALIZE = ("l2", "standard", "none")


class LinearHead(Head):
    """Normalise (``normalize``: 'l2' rows, 'standard' features, or 'none'), then ``X @ coef_.T + b``."""

    _state_arrays: ClassVar[tuple[str, ...]] = ("coef_", "intercept_", "mean_", "scale_")
    _state_scalars: ClassVar[tuple[str, ...]] = ("n_iter_",)
    normalize_rule: ClassVar[Rule] = Rule(str, options=NORMALIZE)

    def _make_model(self):  # pragma: no cover - every linear head overrides
        """The unfitted scikit-learn linear classifier to train on the normalised features."""
        raise NotImplementedError

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
            norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64)).astype(np.float32)
            norms[norms == 0] = 1.0
            return Z / norms[:, None]
        if self.normalize == "standard":
            return (Z - self.mean_) / self.scale_
        return Z

    # ---- fit / decide
    def fit(self, X, y):
        """Validate, normalise, fit the linear model, keep float32 ``coef_``/``intercept_``; return self."""
        Z, y, _ = self._validate_fit(X, y)
        self._fit_normalizer(Z)
        model = self._make_model().fit(self._normalized(Z), y)
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(model.intercept_, dtype=np.float32)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Linear scores: shape (n,) for 2 classes (> 0 means ``classes_[1]``), else (n, n_classes)."""
        scores = self._normalized(self._validate_X(X)) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores
