"""Grid search over one head: one loop owns cloning, folds, parallelism, refit and the results table.

The table has scikit-learn's ``cv_results_`` columns (``params``, ``param_C``,
``split0_test_score``, ``mean_test_score``, ``rank_test_score``, ``mean_fit_time`` ...), so a run's
metrics are that dict written out. Candidates x folds run through joblib, so ``backend="ray"``
(joblib's Ray backend) spreads them over a cluster with no other change. A head may provide a
``search_path`` that evaluates a whole grid at once (e.g. sharing one Gram matrix between C values):
it returns a ``classifiers.base.GridPath`` with the same per-fold scores as this loop and, if it
can, a refit built from its own work; it is used transparently with the local backend.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone

from featcache.core import progress
from featcache.core.cluster import joblib_backend


@dataclass
class SearchResult:
    cv_results: dict
    best_index: int
    best_params: dict
    best_estimator: object
    refit_seconds: float


def candidates(grid: dict[str, list]) -> list[dict]:
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))] or [{}]


def _fit_and_score(estimator, params: dict, X, y, train, valid, scoring=None):
    est = clone(estimator).set_params(**params)
    start = time.perf_counter()
    est.fit(X[train], y[train])
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    score = float(scoring(est, X[valid], y[valid]) if scoring is not None else est.score(X[valid], y[valid]))
    return score, fit_time, time.perf_counter() - start


@contextlib.contextmanager
def parallel_backend(backend: str, n_jobs: int):
    if backend == "ray":
        with joblib_backend(n_jobs):
            yield
    else:
        yield


def grid_search(estimator, grid: dict[str, list], X: np.ndarray, y: np.ndarray, folds, n_jobs: int = 1,
                backend: str = "local", progress_bar: bool = True, scoring=None) -> SearchResult:
    """``scoring``: a scikit-learn scorer ``(estimator, X_valid, y_valid) -> float`` instead of the
    estimator's accuracy (e.g. per image over augmented views); a head's ``search_path`` scores rows
    itself, so it is used only without one."""
    cands = candidates(grid)
    n_folds = len(folds)
    scores = np.empty((len(cands), n_folds))
    fit_times = np.empty_like(scores)
    score_times = np.empty_like(scores)
    bar = progress.bar(len(cands) * n_folds, f"search {type(estimator).__name__}", progress_bar, unit="fit")
    path = getattr(estimator, "search_path", None)
    shared = (path(X, y, folds, cands, n_jobs=n_jobs, on_fit=bar.update)
              if callable(path) and backend == "local" and scoring is None else None)
    if shared is not None:
        scores[:], fit_times[:], score_times[:] = shared.scores, shared.fit_times, shared.score_times
    else:
        jobs = [(c, f) for c in range(len(cands)) for f in range(n_folds)]
        with parallel_backend(backend, n_jobs):
            # joblib's Ray backend cannot stream results; the bar then jumps when all fits are back.
            runner = Parallel(n_jobs=n_jobs, return_as="list" if backend == "ray" else "generator")
            results = runner(delayed(_fit_and_score)(estimator, cands[c], X, y, *folds[f], scoring) for c, f in jobs)
            for (c, f), (score, fit_time, score_time) in zip(jobs, results):
                scores[c, f], fit_times[c, f], score_times[c, f] = score, fit_time, score_time
                bar.update()
    bar.close()
    table = results_table(cands, scores, fit_times, score_times)
    best = int(np.argmin(table["rank_test_score"]))
    start = time.perf_counter()
    if shared is not None and shared.refit is not None:
        best_estimator = shared.refit(cands[best])
    else:
        best_estimator = clone(estimator).set_params(**cands[best]).fit(X, y)
    return SearchResult(table, best, cands[best], best_estimator, time.perf_counter() - start)


def results_table(cands: list[dict], scores: np.ndarray, fit_times: np.ndarray, score_times: np.ndarray) -> dict:
    table: dict[str, list] = {"params": cands}
    for name in sorted({k for c in cands for k in c}):
        table[f"param_{name}"] = [c.get(name) for c in cands]
    for f in range(scores.shape[1]):
        table[f"split{f}_test_score"] = scores[:, f].tolist()
    mean, std = scores.mean(1), scores.std(1)
    table["mean_test_score"] = mean.tolist()
    table["std_test_score"] = std.tolist()
    # Ties rank equal (scikit-learn's "min" ranking); the first of equals wins, as in GridSearchCV.
    order = (-np.round(mean, 12)).argsort(kind="stable")
    rank = np.empty(len(mean), dtype=int)
    rounded = np.round(mean, 12)
    for position, i in enumerate(order):
        rank[i] = position + 1 if position == 0 or rounded[i] != rounded[order[position - 1]] else rank[order[position - 1]]
    table["rank_test_score"] = rank.tolist()
    table["mean_fit_time"] = fit_times.mean(1).tolist()
    table["std_fit_time"] = fit_times.std(1).tolist()
    table["mean_score_time"] = score_times.mean(1).tolist()
    return table
