"""``svm``: a linear support vector machine (scikit-learn ``LinearSVC``, l2 penalty, squared hinge)."""

from __future__ import annotations

from sklearn.svm import LinearSVC

from classifiers.base import Rule, heads
from classifiers.linear import LinearHead


@heads.register("svm")
class SVMHead(LinearHead):
    """One-vs-rest linear SVM on normalised feature vectors (maps are flattened).

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
    }
    default_grid = {"C": [0.01, 0.1, 1, 10, 100]}

    def __init__(self, C=1.0, normalize="l2", dual="auto", tol=1e-4, max_iter=2000, class_weight=None,
                 random_state=0):
        self.C = C
        self.normalize = normalize
        self.dual = dual
        self.tol = tol
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.random_state = random_state

    def _make_model(self):
        return LinearSVC(
            penalty="l2", loss="squared_hinge", C=self.C, dual=self.dual, tol=self.tol, max_iter=self.max_iter,
            class_weight=self.class_weight, random_state=self.random_state,
        )
