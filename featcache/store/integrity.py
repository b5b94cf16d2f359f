"""The integrity gate: every reader of a feature set's rows passes ``check`` (``open_verified``): its
structure, its content hash and the rows' agreement with the manifest, verified once per state of the
file and remembered; ``featcache cache verify`` runs the same ``problems`` without the memo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featcache.core.errors import CacheError, DamagedError
from featcache.store import memo
from featcache.store.digest import ContentDigest
from featcache.store.featureset import FeatureSet, view_numbers
from featcache.store.fingerprint import feature_set_id
from featcache.store.h5 import damaged, reason


def _agreement(fs: "FeatureSet") -> list[str]:
    """The rows against the manifest, and the manifest against the hash the id was made from: holds for
    every file, so version-1 files (whose content hash covers only rows, labels and index) are checked too."""
    f, out = fs._file, []
    index, manifest = f["index"][()], f["manifest"]
    n_files, n_classes = manifest["path"].shape[0], f["class_names"].shape[0]
    if len(index) and (index.min() < 0 or index.max() >= n_files):
        return ["/index points outside /manifest"]
    labels = f["labels"][()]
    if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):
        out.append("/labels point outside /class_names")
    for rows, column in (("labels", "label"), ("split", "split"), ("paths", "path")):
        if not np.array_equal(f[rows][()], manifest[column][()][index]):
            out.append(f"/{rows} disagree with /manifest/{column}")
    if "view" in f and not np.array_equal(f["view"][()], view_numbers(index)):
        out.append("/view disagrees with /index")
    skipped = f["skipped/index"][()]
    if len(skipped) and (skipped.min() < 0 or skipped.max() >= n_files):
        out.append("/skipped/index points outside /manifest")
    recorded = fs.info.manifest_sha256
    if recorded:
        if fs.manifest().sha256 != recorded:
            out.append("/manifest or /class_names differ from the manifest hash recorded at extraction")
        elif fs.info.key:
            if feature_set_id(fs.info.key, recorded) != fs.id:
                out.append("the id does not match the recorded key and manifest")
    return out


def problems(fs: "FeatureSet", features: np.ndarray | None = None) -> list[str]:
    """Everything wrong with an open feature set, reading every row (or hashing ``features``, the rows
    already in memory). The one definition of "damaged": ``check`` and ``verify`` both use it."""
    try:
        digest = ContentDigest(fs.info.content_hash_version)
    except CacheError as err:
        return [str(err)]
    try:
        if features is None:
            for _, block in fs.iter_blocks():
                digest.features(block)
        else:
            digest.features(features)
        out = [] if digest.finish(fs._file) == fs.info.content_sha256 else [
            "content hash differs from the one recorded at extraction: the file was altered"]
        return out + _agreement(fs)
    except DamagedError as err:
        return [err.reason]
    except (OSError, ValueError, KeyError, TypeError) as err:  # h5py reports damaged metadata as any of these
        return [f"unreadable data ({reason(err)})"]


def check(fs: "FeatureSet", features: np.ndarray | None = None) -> None:
    """The integrity gate every reader of rows passes (fit, audit, predict --features, sweep, report,
    ``open_features``): ``problems`` once per state of the file, then remembered (``_memo``); a
    DamagedError naming the fix otherwise. A failed check is never remembered."""
    key, stamp = os.path.realpath(fs.path), memo.stamp(fs.path)
    if stamp is not None and memo.read().get(key) == stamp + [fs.info.content_sha256]:
        return
    found = problems(fs, features)
    if found:
        memo.update(key, None)
        raise damaged(fs.path, found[0] + (f"; {len(found) - 1} more problem(s)" if len(found) > 1 else ""))
    memo.remember(fs.path, stamp, fs.info.content_sha256)


def open_verified(path: str | os.PathLike) -> "FeatureSet":
    """A ``FeatureSet`` that passed ``check``."""
    fs = FeatureSet(path)
    try:
        check(fs)
    except BaseException:
        fs.close()
        raise
    return fs


def verify(path: Path) -> list[str]:
    """``featcache cache verify``: ``problems`` always, never the memo (a success is remembered)."""
    try:
        fs = FeatureSet(path)
    except DamagedError as err:
        return [err.reason]
    except CacheError as err:
        return [str(err)]
    with fs:
        stamp = memo.stamp(fs.path)
        found = problems(fs)
        if found:
            memo.update(os.path.realpath(fs.path), None)
        else:
            memo.remember(fs.path, stamp, fs.info.content_sha256)
    return found
