"""Test hold-out and CV folds, decided per input file rather than per row.

Assignments are made over the feature set's manifest (every input file, skipped ones included) and
only then mapped to rows. Two feature sets of the same folder therefore get the same test images
and the same folds, whatever backbone made them and whichever files each had to skip: that is
what makes runs on different backbones, layers and heads comparable.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from featcache.config.fit import check_split_options
from featcache.core.errors import FeatcacheError


@dataclass
class Split:
    cv_rows: np.ndarray  # feature-set rows used for the grid search and the refit
    test_rows: np.ndarray  # rows scored once at the end
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, valid) positions within cv_rows
    info: dict = field(default_factory=dict)


def working_test_sizes(labels: np.ndarray, seed: int, cv: int) -> tuple[float, float] | None:
    """The smallest and largest ``--test-size``, in steps of 0.01, whose hold-out ``fit`` can use with
    this seed and ``cv``: every class on both sides, and at least max(cv, 2) images of each left for
    cross-validation. None when none can. Tried by splitting as ``assign`` does (on the error path
    only; files that have no features, or are excluded, are counted as present)."""
    labels = np.asarray(labels)
    classes, index = np.unique(labels, return_inverse=True)
    n, k, need = len(labels), len(classes), max(cv, 2)
    works = []
    for step in range(1, 100):
        size = step / 100
        n_test = math.ceil(size * n)  # as train_test_split counts
        if n_test < k or n - n_test < k:
            continue
        train, _ = train_test_split(np.arange(n), test_size=size, random_state=seed, stratify=labels)
        if np.bincount(index[train], minlength=k).min() >= need:
            works.append(size)
    return (works[0], works[-1]) if works else None


def _test_size_hint(labels: np.ndarray, seed: int, cv: int) -> str | None:
    sizes = working_test_sizes(labels, seed, cv)
    return None if sizes is None else f"use a --test-size between {sizes[0]:.2f} and {sizes[1]:.2f} (with --cv {cv})"


def _check_test_size(test_size: float, labels: np.ndarray, seed: int, cv: int) -> None:
    """A stratified hold-out needs every class on both sides (scikit-learn's ``train_test_split`` counts
    ceil(test_size * n) test images): say what ``test_size`` would give and what works."""
    n, k = len(labels), len(np.unique(labels))
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_test >= k and n_train >= k:
        return
    raise FeatcacheError(
        f"--test-size {test_size:g} splits the {n} images ({k} classes) into {n_train} for training and {n_test} for test, "
        f"about {n_train / k:.1f} and {n_test / k:.1f} per class: each side needs at least one image of every class; "
        + (_test_size_hint(labels, seed, cv)
           or f"no --test-size leaves {max(cv, 2)} images of every class for --cv {cv}: add images, or lower --cv")
    )


def assign(paths: list[str], labels: np.ndarray, splits: list[str], test_size: float, seed: int, cv: int) -> tuple[np.ndarray, np.ndarray]:
    """Per manifest entry: is it test, and which CV fold (-1 for test entries)."""
    n = len(paths)
    labels = np.asarray(labels)
    stored_test = np.array([s == "test" for s in splits], dtype=bool)
    if stored_test.any():
        is_test = stored_test
    else:
        check_split_options(None, test_size)
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            raise FeatcacheError("a class has a single image: a stratified test split needs at least 2 per class; add images")
        _check_test_size(test_size, labels, seed, cv)
        _, test_idx = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=labels)
        is_test = np.zeros(n, dtype=bool)
        is_test[test_idx] = True
    fold = np.full(n, -1, dtype=np.int64)
    rest = np.flatnonzero(~is_test)
    _, counts = np.unique(labels[rest], return_counts=True)
    k = min(cv, int(counts.min()))  # rows are checked against cv later with a clear message
    if k >= 2:
        for f, (_, valid) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(rest, labels[rest])):
            fold[rest[valid]] = f
    return is_test, fold


def make_split(manifest_paths: list[str], manifest_labels: np.ndarray, manifest_splits: list[str], row_paths: list[str],
               row_labels: np.ndarray, class_names: list[str], test_size: float = 0.2, seed: int = 0, cv: int = 5,
               exclude: frozenset[str] = frozenset(), row_views: np.ndarray | None = None) -> Split:
    """Rows -> test rows and CV folds by their file.

    ``exclude``: paths whose rows leave both the CV rows and the test rows. The assignment itself is
    made over every file as without it, so the test set is the usual one minus the excluded files and
    a run with exclusions stays comparable with one without.
    ``row_views``: each row's view number, for feature sets with augmented views: all views of a file
    land on the same side of the test split and of every fold (they share its path), and counts are
    of images (view 0 rows)."""
    check_split_options(cv, None)
    present = np.unique(row_labels)
    if len(present) < 2:
        name = class_names[int(present[0])] if len(present) else "none"
        raise FeatcacheError(f"the feature set has a single class ({name}): a classifier needs at least two classes")
    is_test, fold = assign(manifest_paths, manifest_labels, manifest_splits, test_size, seed, cv)
    entry = {p: i for i, p in enumerate(manifest_paths)}
    rows_entry = np.array([entry[p] for p in row_paths], dtype=np.int64)
    kept = np.array([p not in exclude for p in row_paths], dtype=bool)
    test_rows = np.flatnonzero(is_test[rows_entry] & kept)
    cv_rows = np.flatnonzero(~is_test[rows_entry] & kept)
    first = np.ones(len(row_paths), dtype=bool) if row_views is None else np.asarray(row_views) == 0
    labels_cv = row_labels[cv_rows][first[cv_rows]]
    classes, counts = np.unique(labels_cv, return_counts=True)
    if len(classes) < 2:
        raise FeatcacheError("fewer than two classes are left for training after the test split: add images or lower --test-size")
    smallest, fewest = class_names[int(classes[np.argmin(counts)])], int(counts.min())
    stored = any(s == "test" for s in manifest_splits)
    hint = None if stored or fewest >= cv else _test_size_hint(manifest_labels, seed, cv)
    if fewest < 2:  # no number of folds works: each fold's training side must hold every class
        raise FeatcacheError(
            f"class {smallest} has {fewest} image left for cross-validation after the test split, and cross-validation "
            f"needs at least 2 per class: {hint or 'add images of it'}"
        )
    if cv > fewest:
        raise FeatcacheError(
            f"--cv {cv} is larger than the smallest class ({smallest} has {fewest} images for cross-validation): "
            f"use --cv {fewest} or fewer" + (f", or {hint}" if hint else "")
        )
    row_fold = fold[rows_entry[cv_rows]]
    folds = [(np.flatnonzero(row_fold != k), np.flatnonzero(row_fold == k)) for k in range(cv)]
    stored = any(s == "test" for s in manifest_splits)
    # Identifies the assignment itself (per file), so runs can prove they shared test set and folds.
    assignment = hashlib.sha256("\n".join(f"{p}\t{'test' if t else f}" for p, t, f in zip(manifest_paths, is_test, fold)).encode("utf-8", "surrogateescape")).hexdigest()
    info = {
        "test": "stored test split" if stored else f"stratified hold-out of {test_size:g}",
        "test_size": None if stored else test_size,
        "seed": seed,
        "cv": cv,
        "n_cv": int(first[cv_rows].sum()),
        "n_test": int(first[test_rows].sum()),
        "dropped": int(len(manifest_paths) - first.sum()),
        "assignment_sha256": assignment,
    }
    if exclude:
        info["excluded_cv"] = int(np.sum(~kept & ~is_test[rows_entry] & first))  # images, not view rows
        info["excluded_test"] = int(np.sum(~kept & is_test[rows_entry] & first))
    return Split(cv_rows=cv_rows, test_rows=test_rows, folds=folds, info=info)
