"""``fit``: one head, grid-searched on a cached feature set, refitted, scored once, saved as a run.

Fitting reads only the feature set: no images, no backbone. Before it trusts the features it
checks that they still describe the folder they came from (the manifest) and that the file holds
what was written (the content hash).
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers import ParamError, get_head
from featcache.config.fit import FitConfig
from featcache.core import paths, progress
from featcache.core.errors import CacheError, DataError, FeatcacheError
from featcache.core.files import from_cell, output_dir, sha256_file, writable_dir
from featcache.extraction.scan import scan
from featcache.fitting import report, runs
from featcache.fitting.evaluation import ImageScorer, edge_params, score_test, view_accuracies
from featcache.fitting.gallery import MAP_FILE, write_map
from featcache.fitting.params import check_grid, resolve_grid
from featcache.fitting.search import grid_search
from featcache.fitting.splits import make_split
from featcache.store import cache as cache_mod
from featcache.store.featureset import FeatureSet
from featcache.store.info import FeatureSetInfo
from featcache.store.integrity import check
from featcache.store.manifest import diff

# LinearSVC's customary 10 folds; every other head defaults to 5 (each fold is a full training).
RUNS_DIR_FIX = f"choose another with --runs-dir (or {paths.RUNS_DIR_ENV}), or make it writable"


@dataclass
class LoadedFeatures:
    X: np.ndarray
    y: np.ndarray
    paths: list[str]
    class_names: list[str]
    manifest: tuple[list[str], np.ndarray, list[str]]
    info: FeatureSetInfo
    path: Path
    views: np.ndarray | None = None  # each row's view number (0 = the plain crop); None: no views
    n_views: int = 1  # rows per image


def load_features(ref=None, cache_dir=None, allow_stale: bool = False, say: bool = True) -> LoadedFeatures:
    """Open, read everything, check the content hash and freshness."""
    root = paths.cache_dir(cache_dir)
    path = cache_mod.latest(root) if ref is None else cache_mod.find(ref, root)
    with FeatureSet(path) as fs:
        if ref is None:
            progress.say(f"using feature set {fs.id} ({fs.info.extractor.label}, {len(fs)} rows, "
                         f"created {fs.info.made.created}), the most recent in {root}", say)
        raw = fs.load()
        check(fs, raw)  # hashes the rows just read (or finds this file state already verified)
        check_fresh(fs, allow_stale, say)
        labels = fs.labels
        manifest = fs.manifest()
        return LoadedFeatures(
            X=raw.astype(np.float32, copy=False), y=labels.astype(np.int64), paths=fs.paths,
            class_names=fs.class_names, manifest=(manifest.paths, manifest.labels, manifest.splits),
            info=fs.info, path=path, views=fs.view if fs.n_views > 1 else None, n_views=fs.n_views,
        )


def read_exclusions(source, manifest_paths: list[str], data_root: str | None) -> list[str]:
    """The files named by ``source`` (a path list file, a CSV with a ``path`` column such as a filtered
    ``audit.csv``, or a list of paths), as paths of the feature set's manifest. A name that is not a
    file of the feature set is an error, not silently ignored."""
    if isinstance(source, (str, os.PathLike)):
        where = Path(source)
        try:
            with open(where, encoding="utf-8-sig", newline="") as f:  # newline="": a \r in a quoted name stays one
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise FeatcacheError(f"cannot read --exclude file {where} ({err}): give a list of paths, one per line, "
                                 "or a CSV with a path column (e.g. a filtered audit.csv)") from None
        rows = list(csv.reader(io.StringIO(text, newline="")))
        lines = text.splitlines()
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "path" in header:
            at = header.index("path")
            # from_cell: audit.csv put a ' before a path that starts like a spreadsheet formula
            names = [from_cell(r[at]) for r in rows[1:] if len(r) > at and r[at]]
        else:
            names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        what = str(where)
    else:
        names, what = [str(p) for p in source], "the exclusion list"
    known = set(manifest_paths)
    root = os.path.abspath(data_root) if data_root else None
    out, unknown = [], []
    for name in names:
        for written in (name, name.strip()):  # exactly as written (a name may end with a space), else trimmed
            rel = os.path.normpath(written)
            if os.path.isabs(written) and root:
                rel = os.path.relpath(os.path.abspath(written), root)
            if rel in known:
                break
        (out if rel in known else unknown).append(rel)
    if unknown:
        raise FeatcacheError(
            f"{len(unknown)} path(s) in {what} are not files of this feature set (e.g. {unknown[0]!r}): "
            f"give paths relative to the data folder {data_root}, as audit.csv writes them"
        )
    return sorted(set(out))


def check_fresh(fs: FeatureSet, allow_stale: bool, say: bool) -> None:
    info = fs.info
    root = Path(info.data_root)
    if not root.is_dir():
        progress.say(f"note: data folder {root} of feature set {fs.id} is not here; cannot check it for changes", say)
        return
    labels = info.labels_file
    try:
        current = scan(root, labels)
        changes = diff(fs.manifest_signatures(), current)
    except DataError as err:
        changes, reason = True, str(err)
    else:
        reason = f"{changes.summary()} under {root} since extraction" if changes else ""
        if not changes and labels and current.sha256 != info.manifest_sha256:
            changes, reason = True, f"the labels in {labels} changed since extraction"
    if not changes:
        return
    message = (
        f"feature set {fs.id} is stale ({reason}): refresh it with `{info.refresh_command()}` "
        "(only new or changed files are extracted), or pass --allow-stale to fit on it as it is"
    )
    if not allow_stale:
        raise CacheError(message)
    progress.say(f"warning: {message}", say)


def fit(config: FitConfig | str | None = None, /, *, progress_bar: bool = True, loaded: LoadedFeatures | None = None,
        **settings):
    """Grid-search a head on a feature set, refit the best, score the test split once, save a run.

    ``fit(head="svm", features=..., ...)`` or ``fit(FitConfig(...))``: the settings are the fields of
    ``FitConfig`` (see there, or ``featcache fit --help``). ``loaded``: the feature set already read
    (a sweep fits several heads on one). A refit with NaN or inf weights is refused before the run
    folder is made. On a feature set with augmented views every view of a training image trains the
    head, and each CV fold and the test set are scored per image (``views_at_test``); the run records
    the test accuracy both ways.
    """
    cfg = FitConfig.make(config, **settings)
    head_cls = get_head(cfg.head)
    grid, fixed = resolve_grid(head_cls, cfg.params, cfg.head_params)
    if "random_state" in head_cls._param_rules and "random_state" not in fixed and "random_state" not in grid:
        fixed["random_state"] = cfg.seed  # --seed seeds the head too (the svm's dual solver, the MLP's init)
    check_grid(head_cls, {**{k: [v] for k, v in fixed.items()}, **grid})
    if cfg.run_dir is None:  # before the search, not after it
        writable_dir(paths.runs_dir(cfg.runs_dir), "runs dir", RUNS_DIR_FIX, create=False)
    data = loaded or load_features(cfg.features, cfg.cache_dir, cfg.allow_stale, progress_bar)
    if not data.class_names:
        raise DataError(f"feature set {data.info.id} has no labels (its folder has no class subfolders): fit needs them; "
                        "extract a folder with one subfolder per class, or pass --labels FILE.csv to extract "
                        "(`featcache audit` and `featcache predict` work on it as it is)")
    excluded = read_exclusions(cfg.exclude, data.manifest[0], data.info.data_root or None) if cfg.exclude is not None else []
    split = make_split(*data.manifest, data.paths, data.y, data.class_names, test_size=cfg.test_size, seed=cfg.seed,
                       cv=cfg.folds, exclude=frozenset(excluded), row_views=data.views)
    estimator = head_cls(**fixed)
    X_cv, y_cv = data.X[split.cv_rows], data.y[split.cv_rows]
    scoring = ImageScorer(data.n_views, cfg.views_at_test) if data.n_views > 1 else None
    started = time.perf_counter()
    try:
        result = grid_search(estimator, grid, X_cv, y_cv, split.folds, n_jobs=cfg.n_jobs, backend=cfg.backend,
                             progress_bar=progress_bar, scoring=scoring)
    except ValueError as err:
        if isinstance(err, ParamError):
            raise
        raise FeatcacheError(f"the {cfg.head} head cannot train on feature set {data.info.id}: {err}") from err
    search_seconds = time.perf_counter() - started
    _check_finite(cfg.head, result.best_estimator, {**fixed, **result.best_params})
    exclusions = _exclusions(cfg.exclude, excluded, split) if cfg.exclude is not None else None
    return _save(cfg, grid, fixed, result, split, data, search_seconds, exclusions)


def _check_finite(head: str, estimator, params: dict) -> None:
    """Refuse a refitted head with NaN or inf weights before anything of its run is written."""
    bad = estimator.nonfinite_state()
    if bad:
        used = ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
        raise FeatcacheError(f"the {head} head fitted with {used} has non-finite learned weights ({', '.join(bad)}): "
                             "the fit diverged; fit again with other values (e.g. a smaller learning_rate or C)")


def _exclusions(source, paths: list[str], split) -> dict:
    """What a run records of ``--exclude``: the source, its hash, every path, and where they came from."""
    record = {"source": "list", "sha256": None, "paths": paths, "cv": split.info.get("excluded_cv", 0),
              "test": split.info.get("excluded_test", 0)}
    if isinstance(source, (str, os.PathLike)):
        record.update(source=str(Path(source).resolve()), sha256=sha256_file(Path(source)))
    record["without_features"] = len(paths) - record["cv"] - record["test"]  # skipped at extraction anyway
    return record


def _save(cfg: FitConfig, grid, fixed, result, split, data: LoadedFeatures, search_seconds, exclusions=None):
    """Score the test split once (per image), then write the run."""
    estimator, names, n_views = result.best_estimator, data.class_names, data.n_views
    X_test, y_test = data.X[split.test_rows], data.y[split.test_rows]
    test, predicted, confidence = score_test(estimator, X_test, y_test, names, n_views, cfg.views_at_test)
    views = None
    if n_views > 1:
        views = {"recipe": str(data.info.views), "n": n_views, "at_test": cfg.views_at_test,
                 "test_accuracy": view_accuracies(estimator, X_test, y_test, n_views, {cfg.views_at_test: test.accuracy})}
    table, best = result.cv_results, result.best_index
    params = runs.RunParams(
        head=cfg.head, grid=grid, fixed_params=fixed, head_params=estimator.get_params(), cv=split.info["cv"], split=split.info,
        seed=split.info["seed"], n_jobs=cfg.n_jobs, backend=cfg.backend, class_names=names,
        features=runs.FeatureRef.of(data.info, data.path), created=runs.now(), excluded=exclusions,
        views_at_test=cfg.views_at_test if n_views > 1 else None,
    )
    metrics = runs.RunMetrics(
        cv_results=table, best_index=best, best_params=result.best_params, best_cv_mean=table["mean_test_score"][best],
        best_cv_std=table["std_test_score"][best], best_on_edge=edge_params(grid, table, best),
        search_seconds=round(search_seconds, 3), refit_seconds=round(result.refit_seconds, 3),
        fit_seconds=round(search_seconds + result.refit_seconds, 3), test=test, history=getattr(estimator, "history_", None),
        views=views,
    )
    test_images = split.test_rows[::n_views]  # with views: each image's first row
    predictions = [(data.paths[row], names[int(t)], names[int(p)], float(c))
                   for row, t, p, c in zip(test_images, y_test[::n_views], predicted, confidence)]
    runs_root = None if cfg.run_dir else output_dir(paths.runs_dir(cfg.runs_dir), what="runs dir", fix=RUNS_DIR_FIX)
    path = Path(cfg.run_dir) if cfg.run_dir else runs.new_run_dir(runs_root, cfg.head, data.info.id)
    output_dir(path, what="run folder", fix=RUNS_DIR_FIX)
    # The map shows images: with views, each image's first row (the plain crop), its per-image prediction.
    write_map(path / MAP_FILE, data.X, data.paths, data.y, names, test_images, split.cv_rows[::n_views],
              {int(row): names[int(p)] for row, p in zip(test_images, predicted)}, seed=split.info["seed"])
    run = runs.save_run(path, params, metrics, estimator, predictions)
    report.render_run(run)
    return runs.seal(run)
