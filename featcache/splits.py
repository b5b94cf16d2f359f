"""Test hold-out and CV folds, decided per input file rather than per row.

Assignments are made over the feature set's manifest (every input file, skipped ones included) and
only then mapped to rows. Two feature sets of the same folder therefore get the same test images
and the same folds, whatever backbone made them and whichever files each had to skip: that is
what makes runs on different backbones, layers and heads comparable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import FeatcacheError


@dataclass
class Split:
    cv_rows: np.ndarray  # feature-set rows used for the grid search and the refit
    test_rows: np.ndarray  # rows scored once at the end
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, valid) positions within cv_rows
    info: dict = field(default_factory=dict)


def assign(paths: list[str], labels: np.ndarray, splits: list[str], test_size: float, seed: int, cv: int) -> tuple[np.ndarray, np.ndarray]:
    """Per manifest entry: is it test, and which CV fold (-1 for test entries)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    n = len(paths)
    labels = np.asarray(labels)
    stored_test = np.array([s == "test" for s in splits], dtype=bool)
    if stored_test.any():
        is_test = stored_test
    else:
        if not 0 < test_size < 1:
            raise FeatcacheError(f"--test-size {test_size} must be between 0 and 1 (a fraction of the images)")
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            raise FeatcacheError("a class has a single image: a stratified test split needs at least 2 per class; add images")
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
    if cv < 2:
        raise FeatcacheError(f"--cv {cv} is too small: cross-validation needs at least 2 folds")
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
    if cv > counts.min():
        smallest = class_names[int(classes[np.argmin(counts)])]
        raise FeatcacheError(
            f"--cv {cv} is larger than the smallest class ({smallest} has {counts.min()} images for cross-validation): "
            f"use --cv {max(2, int(counts.min()))} or fewer"
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
