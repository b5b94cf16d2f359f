"""What every head shares: the head registry, parameter rules, input validation and saved state.

A head is a scikit-learn classifier over plain numpy arrays (``BaseEstimator`` + ``ClassifierMixin``):
``__init__`` stores its keyword arguments, ``fit`` checks them against the class's ``_param_rules``,
validates X and y, sets trailing-underscore state and returns ``self``. X may be feature maps
``(n, C, H, W)`` or vectors ``(n, d)``; ``n_features_in_`` is always the flattened width.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y, validate_data

from classifiers.registry import Registry

STATE_FORMAT = 1  # bump when the meaning of saved arrays or config changes


class ParamError(ValueError):
    """A head parameter has the wrong type or value; ``str()`` says which rule it broke."""


class _HeadRegistry(Registry):
    """The generic registry, plus: registering a head class also sets its ``name``."""

    def register(self, name: str):
        add = super().register(name)

        def decorator(cls):
            cls.name = name
            return add(cls)

        return decorator


heads: Registry = _HeadRegistry("head")


# --------------------------------------------------------------------------- parameter rules
_KIND_WORDS = {float: "a finite float", int: "an int", str: "a str", bool: "a bool", dict: "a dict"}


def _isa(value: Any, kind: type) -> bool:
    if kind is float:  # finite only: C=inf or a learning rate of nan trains a head of NaN weights
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and _finite(value)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    return isinstance(value, kind)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except (OverflowError, TypeError, ValueError):  # an int beyond float's range
        return False


def finite_weights(value: dict) -> bool:
    """A ``class_weight`` dict: every weight a finite number >= 0."""
    return all(_isa(w, float) and w >= 0 for w in value.values())


CLASS_WEIGHT_TEXT = "None, 'balanced' or a dict of finite class weights >= 0"


def _fmt(x: Any) -> str:
    return repr(x.item() if isinstance(x, np.generic) else x)


@dataclass(frozen=True)
class Rule:
    """One parameter's contract, e.g. ``Rule(float, gt=0)`` or ``Rule(str, options=("l2", "none"))``.

    ``options`` alone with ``kind=str`` means "one of these"; with another kind they are extra
    accepted values (``Rule(bool, options=("auto",))`` accepts ``'auto'`` or a bool). ``check`` and
    ``text`` add a predicate and its wording for what bounds cannot say.
    """

    kind: type
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    options: tuple = ()
    none: bool = False
    check: Callable[[Any], bool] | None = None
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none
        if self.options and isinstance(value, str) and value in self.options:
            return True
        if self.kind is str and self.options:
            return False
        if not _isa(value, self.kind):
            return False
        bounds = [(self.gt, np.greater), (self.ge, np.greater_equal), (self.lt, np.less), (self.le, np.less_equal)]
        if any(b is not None and not op(value, b) for b, op in bounds):
            return False
        return self.check(value) if self.check else True

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.kind is str and self.options:
            return "one of " + ", ".join(_fmt(o) for o in self.options)
        words = _KIND_WORDS.get(self.kind, f"a {self.kind.__name__}")
        lo = (self.gt, "(") if self.gt is not None else (self.ge, "[") if self.ge is not None else None
        hi = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if lo and hi:
            words += f" in {lo[1]}{lo[0]:g}, {hi[0]:g}{hi[1]}"
        elif lo or hi:
            op = {"(": ">", "[": ">=", ")": "<", "]": "<="}[(lo or hi)[1]]
            words += f" {op} {(lo or hi)[0]:g}"
        extras = (["None"] if self.none else []) + [_fmt(o) for o in self.options]
        if not extras:
            return words
        return f"{', '.join(extras)} or {words}"


# --------------------------------------------------------------------------- grid search over a path
class GridPath(NamedTuple):
    """What a head's ``search_path(X, y, folds, candidates, n_jobs, on_fit)`` returns.

    ``scores``, ``fit_times``, ``score_times``: arrays of shape (candidates, folds), the validation
    accuracy of each candidate on each fold as fitting it there and scoring it would give (up to
    rounding: a fitted head keeps float32 weights, so a validation image whose two best classes tie
    to ~1e-6 could go either way).
    ``refit(params)``: the head fitted on all of X with those parameters, built from work the path
    already did; None when the search should refit it with ``clone(head).set_params(...).fit``.
    A head returns None instead of a GridPath when its path does not apply to a grid or data.
    """

    scores: np.ndarray
    fit_times: np.ndarray
    score_times: np.ndarray
    refit: Callable[[dict], Any] | None = None


# --------------------------------------------------------------------------- probabilities
def proba_from_decision(decision: np.ndarray) -> np.ndarray:
    """Decision values -> probabilities: sigmoid for binary (1-D) scores, softmax otherwise.

    Computed in float64 so that it stays strictly monotonic in the (float32) decision values.
    """
    d = np.asarray(decision, dtype=np.float64)
    if d.ndim == 1:
        p1 = 1.0 / (1.0 + np.exp(-d))
        return np.column_stack([1.0 - p1, p1])
    d = d - d.max(axis=1, keepdims=True)
    e = np.exp(d)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- JSON helpers
def to_json(value: Any) -> Any:
    """Parameters and learned scalars -> JSON values; dicts with non-str keys become item lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"__items__": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__} as JSON: {value!r}")


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__items__"}:
            return {from_json(k): from_json(v) for k, v in value["__items__"]}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _labels_to_json(classes: np.ndarray) -> dict:
    """``classes_`` -> {"values": JSON list, "dtype": numpy dtype string or "object"}."""
    if classes.dtype.kind == "O":
        values = [c.item() if isinstance(c, np.generic) else c for c in classes]
        if not all(isinstance(c, (str, int, float, bool)) for c in values):
            raise TypeError("can only save str, int, float or bool class labels")
        return {"values": values, "dtype": "object"}
    if classes.dtype.kind not in "Uiufb":
        raise TypeError(f"can only save str, int, float or bool class labels; got dtype {classes.dtype}")
    return {"values": classes.tolist(), "dtype": classes.dtype.str}


def _labels_from_json(spec: dict) -> np.ndarray:
    if spec["dtype"] == "object":
        labels = np.empty(len(spec["values"]), dtype=object)
        labels[:] = spec["values"]
        return labels
    return np.array(spec["values"], dtype=np.dtype(spec["dtype"]))


# --------------------------------------------------------------------------- the head base class
class Head(ClassifierMixin, BaseEstimator):
    """Base of every head: parameter checks, N-D input validation, predict, and saved state.

    Subclasses set ``_param_rules`` and ``default_grid``, implement ``fit`` and
    ``decision_function``, and list the learned arrays to save in ``_state_arrays`` (learned
    scalars in ``_state_scalars``). ``name`` is set by ``@heads.register``.
    """

    name: ClassVar[str] = "?"
    _param_rules: ClassVar[dict[str, Rule]] = {}
    default_grid: ClassVar[dict[str, list]] = {}
    _state_arrays: ClassVar[tuple[str, ...]] = ()
    _state_scalars: ClassVar[tuple[str, ...]] = ()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # any (n, ...) array; flattened or pooled
        return tags

    # ---- parameters
    def _check_params(self) -> None:
        for param, rule in self._param_rules.items():
            value = getattr(self, param)
            if not rule.accepts(value):
                raise ParamError(
                    f"The {param!r} parameter of the {self.name} head must be {rule.describe()}. Got {_fmt(value)}."
                )

    # ---- inputs
    def _check_input(self, X: np.ndarray) -> np.ndarray:
        """Hook: reject array shapes this head cannot use (before the width check)."""
        return X

    def _features(self, X: np.ndarray, *, fit: bool) -> np.ndarray:
        """Hook: validated (n, ...) float32 array -> what the model sees. Default: flatten."""
        return X.reshape(X.shape[0], -1)

    def _finish_validation(self, X_in, X: np.ndarray, *, fit: bool) -> np.ndarray:
        X = self._check_input(X)
        flat = X.reshape(X.shape[0], -1)
        # feature names (DataFrames are 2-D, so their width is the flat width) and n_features_in_
        validate_data(self, X_in if hasattr(X_in, "columns") else flat, reset=fit, skip_check_array=True)
        return self._features(X, fit=fit)

    def _validate_fit(self, X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check params and data; set ``classes_``. Returns (features, y as given, y as class index)."""
        self._check_params()
        Xa, y = check_X_y(X, y, allow_nd=True, dtype=np.float32, estimator=self)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"the {self.name} head needs at least 2 classes to learn from, but y has 1 class "
                f"({_fmt(classes[0])})"
            )
        features = self._finish_validation(X, Xa, fit=True)
        self.classes_ = classes
        return features, y, y_index

    def _validate_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        Xa = check_array(X, allow_nd=True, dtype=np.float32, estimator=self)
        return self._finish_validation(X, Xa, fit=False)

    # ---- predictions
    def decision_function(self, X) -> np.ndarray:  # pragma: no cover - every head overrides
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        """The class with the highest decision value (for 2 classes: ``classes_[1]`` where > 0)."""
        d = self.decision_function(X)
        index = (d > 0).astype(np.intp) if d.ndim == 1 else d.argmax(axis=1)
        return self.classes_[index]

    # ---- saved state (no pickle: arrays for safetensors + a JSON config)
    def nonfinite_state(self) -> list[str]:
        """The learned arrays holding NaN or inf (a fit that diverged, e.g. at a huge learning rate):
        such a head predicts nonsense without an error, so it is not saved."""
        arrays, _ = self._get_state()
        return [name for name, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        check_is_fitted(self)
        arrays = {
            attr: np.ascontiguousarray(getattr(self, attr))
            for attr in self._state_arrays
            if getattr(self, attr, None) is not None
        }
        config = {
            "format": STATE_FORMAT,
            "head": self.name,
            "params": to_json(self.get_params(deep=False)),
            "classes": _labels_to_json(self.classes_),
            "n_features_in": int(self.n_features_in_),
            "learned": {attr: to_json(getattr(self, attr)) for attr in self._state_scalars},
        }
        if hasattr(self, "feature_names_in_"):
            config["feature_names_in"] = [str(n) for n in self.feature_names_in_]
        return arrays, config

    @classmethod
    def _from_state(cls, arrays: dict[str, np.ndarray], config: dict):
        if config.get("format") != STATE_FORMAT:
            raise ValueError(f"saved head has format {config.get('format')!r}, this version reads {STATE_FORMAT}")
        if config.get("head") != cls.name:
            raise ValueError(f"saved head is {config.get('head')!r}, not {cls.name!r}")
        est = cls(**from_json(config["params"]))
        est.classes_ = _labels_from_json(config["classes"])
        est.n_features_in_ = int(config["n_features_in"])
        if "feature_names_in" in config:
            est.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
        for attr in cls._state_arrays:
            setattr(est, attr, arrays.get(attr))
        for attr, value in config.get("learned", {}).items():
            setattr(est, attr, from_json(value))
        est._restore(arrays, config)
        return est

    def _restore(self, arrays: dict[str, np.ndarray], config: dict) -> None:
        """Hook: rebuild what is not a plain attribute (e.g. a torch module)."""
