"""``svm``: a linear support vector machine (scikit-learn ``LinearSVC``, l2 penalty, squared hinge).

On wide features it is fitted through the Gram matrix (see ``classifiers.linear``): the same
objective, exactly, at the cost of an n x n problem instead of n x d.
"""

from __future__ import annotations

from sklearn.svm import LinearSVC

from classifiers.base import Rule, heads
from classifiers.linear import LinearHead


@heads.register("svm")
class SVMHead(LinearHead):
    """One-vs-rest linear SVM on normalised feature vectors (maps are flattened).

    ``solver``: "liblinear" fits LinearSVC on the features; "gram" fits the same objective through
    the Gram matrix; "auto" takes "gram" when features outnumber training images.
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
        "class_weight": Rule(dict, options=("balanced",), none=True),
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

    def _gram_model(self, **overrides):
        return self._make_model(fit_intercept=False, dual=True, **overrides)
