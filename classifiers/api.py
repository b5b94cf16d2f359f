"""The public API of ``classifiers`` (re-exported lazily by the package; see ``classifiers/__init__``).

Adding a head is one module with one ``@heads.register("name")`` class, imported below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from classifiers.base import Head, ParamError, Rule, heads, proba_from_decision
from classifiers import gap, logreg, mlp, ridge, svm  # noqa: F401,E402  (importing registers the heads)

__all__ = ["Head", "ParamError", "Rule", "heads", "get_head", "list_heads", "save_head", "load_head", "scores"]

ARRAYS_FILE = "head.safetensors"
CONFIG_FILE = "head.json"


def get_head(name: str) -> type[Head]:
    """The head class registered as ``name``; raises ``UnknownName`` (a KeyError) with suggestions."""
    return heads.get(name)


def list_heads(pattern: str | None = None) -> list[str]:
    """Registered head names, sorted; ``pattern`` is a glob such as ``"log*"``."""
    return heads.names(pattern)


def scores(estimator, X) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, confidence in [0, 1]) for any fitted classifier.

    The confidence is the largest ``predict_proba`` value where the estimator has one, else the
    largest softmax (sigmoid for 2 classes) of ``decision_function``. It ranks predictions but is
    NOT a calibrated probability (for svm in particular).
    """
    if hasattr(estimator, "predict_proba"):
        proba = np.asarray(estimator.predict_proba(X))
    else:
        proba = proba_from_decision(estimator.decision_function(X))
    best = proba.argmax(axis=1)
    return np.asarray(estimator.classes_)[best], proba[np.arange(len(best)), best]


def save_head(estimator: Head, directory: str | os.PathLike) -> list[Path]:
    """Write a fitted head as ``head.safetensors`` (arrays) + ``head.json`` (config); no pickle.

    Each file is written to a temporary name in ``directory`` and then moved into place, so a
    crash never leaves a complete-looking pair. Returns the two paths.
    """
    from safetensors.numpy import save_file

    bad = estimator.nonfinite_state()
    if bad:
        raise ValueError(f"the {estimator.name} head's learned {', '.join(bad)} hold NaN or inf (the fit diverged): "
                         "refit it with other parameters (e.g. a smaller learning_rate or C) before saving")
    arrays, config = estimator._get_state()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / ARRAYS_FILE, directory / CONFIG_FILE]
    for path in paths:
        path.unlink(missing_ok=True)
    tmp = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp[0]))
    tmp[1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for src, dst in zip(tmp, paths):
        os.replace(src, dst)
    return paths


def load_head(directory: str | os.PathLike) -> Head:
    """Read a head written by ``save_head``; it predicts exactly as the head that was saved."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path, arrays_path = directory / CONFIG_FILE, directory / ARRAYS_FILE
    for path in (config_path, arrays_path):
        if not path.is_file():
            raise FileNotFoundError(f"no saved head in {directory}: {path.name} is missing")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return get_head(config["head"])._from_state(load_file(str(arrays_path)), config)
