"""The settings of a fit as one record, and every default of fitting defined once: ``fit``, ``audit``
(which checks the test split and folds a fit would use) and ``sweep`` read them here, and the CLI's
options take their defaults from here (tests/test_architecture.py checks it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from featcache.config.choices import AT_TEST, BACKENDS, one_of
from featcache.core.errors import FeatcacheError

DEFAULT_HEAD = "svm"
# LinearSVC's customary 10 folds; every other head defaults to 5 (each fold is a full training).
HEAD_CV = {"svm": 10}
OTHER_CV = 5
# A sweep's rows share one split and one set of folds, whatever their heads: one number for all, the cheaper one.
SWEEP_CV = OTHER_CV
TEST_SIZE = 0.2  # the stratified hold-out when the folder has no test/ split
SEED = 0


def default_cv(head: str) -> int:
    return HEAD_CV.get(head, OTHER_CV)


def check_split_options(cv: int | None, test_size: float | None) -> None:
    """``--cv`` and ``--test-size`` as ``fit``, ``audit`` and ``sweep`` take them (None: the command's default)."""
    if cv is not None and cv < 2:
        raise FeatcacheError(f"--cv {cv} is too small: cross-validation needs at least 2 folds; use --cv 2 or more, "
                             "or leave it out for the default")
    if test_size is not None and not 0 < test_size < 1:
        raise FeatcacheError(f"--test-size {test_size:g} must be between 0 and 1 (a fraction of the images, e.g. 0.2)")


@dataclass(frozen=True)
class FitConfig:
    """Everything ``featcache fit`` can be told; defaults are the CLI's defaults.

    ``params``: the grid to search (None: the head's default grid, less the names in ``head_params``);
    ``head_params``: fixed values (``--set``), never also searched. ``exclude``: a file listing paths
    (or a CSV with a ``path`` column, e.g. a filtered ``audit.csv``), or a list of paths: those files
    leave training and test. ``views_at_test``: how a CV or test image of a feature set with views is
    scored (the head's outputs averaged over its views, or view 0 only).
    """

    head: str = DEFAULT_HEAD
    features: str | None = None  # id, id prefix or path; None: the most recent complete feature set
    params: dict | None = None
    head_params: dict | None = None
    cv: int | None = None  # None: default_cv(head)
    test_size: float = TEST_SIZE
    seed: int = SEED
    n_jobs: int = 1
    backend: str = "local"
    views_at_test: str = "mean"
    exclude: object = None
    allow_stale: bool = False
    cache_dir: str | None = None
    runs_dir: str | None = None
    run_dir: str | None = None  # the run folder itself (sweeps); None: a new one under runs_dir

    def __post_init__(self):
        for name in ("features", "cache_dir", "runs_dir", "run_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))
        if self.views_at_test not in AT_TEST:
            raise FeatcacheError(f"unknown --views-at-test {self.views_at_test!r}: use {one_of(AT_TEST)}")
        if self.backend not in BACKENDS:
            raise FeatcacheError(f"unknown backend {self.backend!r}: use {one_of(BACKENDS)}")
        if self.n_jobs == 0 or self.n_jobs < -1:
            raise FeatcacheError(f"--n-jobs {self.n_jobs}: use a positive number, or -1 for all cores")
        check_split_options(self.cv, self.test_size)

    @classmethod
    def make(cls, config: "FitConfig | str | None" = None, **settings) -> "FitConfig":
        """``fit(head="svm", ...)``, ``fit("svm", ...)``, ``fit(cfg)`` or ``fit(cfg, seed=1)``."""
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown fit setting(s): {', '.join(sorted(unknown))}")
        if isinstance(config, FitConfig):
            return replace(config, **settings)
        if config is not None:
            settings["head"] = config
        return cls(**settings)

    @property
    def folds(self) -> int:
        return default_cv(self.head) if self.cv is None else self.cv
