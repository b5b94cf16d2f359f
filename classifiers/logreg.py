"""``logreg``: multinomial logistic regression (scikit-learn ``LogisticRegression``, lbfgs).

On wide features it is fitted through the Gram matrix (see ``classifiers.linear``), exactly.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from classifiers.base import CLASS_WEIGHT_TEXT, Rule, finite_weights, heads, proba_from_decision
from classifiers.linear import LinearHead


@heads.register("logreg")
class LogRegHead(LinearHead):
    """Softmax regression on normalised feature vectors (maps are flattened).

    ``predict_proba`` is the model's softmax (sigmoid for 2 classes) of ``decision_function``.
    """

    solvers = ("auto", "lbfgs", "gram")
    _param_rules = {
        "C": Rule(float, gt=0),
        "normalize": LinearHead.normalize_rule,
        "max_iter": Rule(int, ge=1),
        "tol": Rule(float, gt=0),
        "class_weight": Rule(dict, options=("balanced",), none=True, check=finite_weights, text=CLASS_WEIGHT_TEXT),
        "solver": Rule(str, options=solvers),
    }
    default_grid = {"C": [0.01, 0.1, 1, 10, 100]}

    def __init__(self, C=1.0, normalize="l2", max_iter=1000, tol=1e-4, class_weight=None, solver="auto"):
        self.C = C
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.solver = solver

    def _make_model(self, **overrides):
        kwargs = dict(C=self.C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol, class_weight=self.class_weight)
        return LogisticRegression(**{**kwargs, **overrides})

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        return proba_from_decision(self.decision_function(X))
