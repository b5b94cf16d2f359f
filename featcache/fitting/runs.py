"""Run directories: everything one fit leaves behind, and reading it back safely.

    <runs>/<time>-<head>-<feature set>/
        params.json           head, grid, cv, split, seed, feature-set id and metadata
        metrics.json          every candidate x fold (scikit-learn cv_results_ columns), best
                              parameters, test accuracy, per-class precision/recall/F1, confusion
        test_predictions.csv  path, true class, predicted class, confidence for every test image
        head/head.safetensors + head/head.json    the fitted head, no pickle
        report.md, report.html, plots/*.png   (featcache/fitting/report.py)
        checksums.json        sha256 of the records above; written last (``seal``), so it marks a finished run

``load_run`` refuses a directory without checksums (not a run, or interrupted) and any file whose
hash changed since it was saved.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from classifiers import load_head, save_head
from featcache.core.errors import DamagedError, RunError
from featcache.core.files import sha256_file, write_csv, write_json
from featcache.store.info import FeatureSetInfo
from featcache.store.integrity import open_verified

CHECKSUMS = "checksums.json"
TRUSTED = ("params.json", "metrics.json", "test_predictions.csv", "head/head.safetensors", "head/head.json")


@dataclass
class TestScores:
    n: int
    accuracy: float
    per_class: dict[str, dict]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted


@dataclass(frozen=True)
class FeatureRef:
    """What a run keeps of its feature set (``params.json`` "features"): the identity recorded in the set
    (its id, key and content hash, which ``predict`` checks the set against), what made it, and its path."""

    id: str
    model: str
    family: str
    arch: str
    weights: str
    weights_kind: str
    weights_path: str
    layer: str
    pool: str
    preprocess: dict
    decode: dict
    dtype: str
    precision: str
    feature_shape: list
    data_root: str
    manifest_sha256: str
    content_sha256: str | None
    created: str
    key: dict
    n_rows: int | None
    n_skipped: int | None
    images_per_second: float
    extract_seconds: float
    versions: dict
    path: str
    views: str = "none"  # written only for sets with views (a run's record without them is unchanged)
    n_views: int = 1

    @classmethod
    def of(cls, info: FeatureSetInfo, path: Path) -> "FeatureRef":
        attrs = info.to_attrs()
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls) if f.name not in ("path", "views", "n_views")},
                   path=str(path), views=str(info.views), n_views=info.views.count)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.n_views == 1:
            del d["views"], d["n_views"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureRef":
        """Older runs may lack fields added since: they read as None (or no views)."""
        return cls(**{f.name: d.get(f.name, f.default if f.default is not MISSING else None) for f in fields(cls)})

    @property
    def label(self) -> str:
        return f"{self.model}/{self.layer}/{self.pool}"


@dataclass
class RunParams:
    """What was asked and on what: ``params.json``."""

    head: str
    grid: dict[str, list]
    fixed_params: dict
    head_params: dict
    cv: int
    split: dict  # splits.Split.info: how the test set and folds were chosen
    seed: int
    n_jobs: int
    backend: str
    class_names: list[str]
    features: FeatureRef
    created: str  # ISO time to the millisecond: orders runs made within one second
    # fit --exclude: {"source", "sha256", "paths", "cv", "test", "without_features"}; None: nothing excluded
    excluded: dict | None = None
    views_at_test: str | None = None  # with augmented views: "mean" (averaged over an image's views) or "first"

    def to_dict(self) -> dict:
        d = asdict(self) | {"features": self.features.to_dict()}
        if d["views_at_test"] is None:  # runs without views keep the record they always had
            del d["views_at_test"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunParams":
        """Read ``params.json``; fields added later (``excluded``, ``views_at_test``) take their defaults in older runs."""
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        return cls(**values | {"features": FeatureRef.from_dict(d["features"])})

    @property
    def feature_id(self) -> str:
        return self.features.id

    @property
    def features_label(self) -> str:
        return self.features.label


@dataclass
class RunMetrics:
    """What came out: ``metrics.json``."""

    cv_results: dict  # scikit-learn cv_results_ columns
    best_index: int
    best_params: dict
    best_cv_mean: float
    best_cv_std: float
    best_on_edge: list[str]
    search_seconds: float
    refit_seconds: float
    fit_seconds: float
    test: TestScores
    history: list[dict] | None = None  # per-epoch figures of heads that train by epochs (mlp)
    # feature sets with augmented views: recipe, n, at_test, and test_accuracy per --views-at-test rule
    views: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("history", "views"):
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunMetrics":
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        values["test"] = TestScores(**d["test"])
        return cls(**values)

    def fold_scores(self) -> list[float]:
        """The best candidate's score on each CV fold."""
        table = self.cv_results
        folds = sum(1 for k in table if k.startswith("split") and k.endswith("_test_score"))
        return [table[f"split{k}_test_score"][self.best_index] for k in range(folds)]


@dataclass
class Run:
    path: Path
    params: RunParams
    metrics: RunMetrics
    estimator: object = None  # the fitted head, in memory right after ``fit`` (else ``head()`` loads it)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def test_accuracy(self) -> float:
        return self.metrics.test.accuracy

    def head(self):
        return load_head(self.path / "head")

    def summary(self) -> str:
        m, p = self.metrics, self.params
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in m.best_params.items())
        given = ", ".join(f"{k}={_fmt(v)}" for k, v in p.fixed_params.items() if k != "random_state")  # --set
        if given:
            best = f"best {best}; set {given}" if best else f"set {given}"
        else:
            best = f"best {best or 'defaults'}"
        views = ""
        if m.views:
            other = "first" if m.views["at_test"] == "mean" else "mean"
            views = (f", {'averaged over' if m.views['at_test'] == 'mean' else 'first of'} {m.views['n']} views "
                     f"({m.views['recipe']}); {other}: {m.views['test_accuracy'][other]:.4f}")
        return (
            f"run {self.path}: {p.head} on feature set {p.feature_id} "
            f"({p.features.model} {p.features.layer}); {best}; "
            f"CV accuracy {m.best_cv_mean:.4f} +- {m.best_cv_std:.4f}; "
            f"test accuracy {self.test_accuracy:.4f} ({m.test.n} images{views}"
            + (f"; {len(p.excluded['paths'])} files excluded" if p.excluded else "") + ")"
        )

    def to_row(self) -> dict:
        """One line of ``featcache runs`` / ``fit --json``: what the table shows, as data."""
        p, m = self.params, self.metrics
        return {"run": str(self.path), "name": self.name, "head": p.head, "features": p.feature_id,
                "model": p.features.model, "layer": p.features.layer, "pool": p.features.pool,
                "best_params": m.best_params, "cv_mean": m.best_cv_mean, "cv_std": m.best_cv_std,
                "test_accuracy": m.test.accuracy, "test_images": m.test.n, "fit_seconds": m.fit_seconds,
                "created": p.created, "views": p.features.views, "views_at_test": p.views_at_test}


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def new_run_dir(runs_dir: Path, head: str, fsid: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = runs_dir / f"{stamp}-{head}-{fsid[:8]}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def save_run(path: Path, params: RunParams, metrics: RunMetrics, estimator, predictions: list[tuple[str, str, str, float]]) -> Run:
    """Write a run directory's records; ``predictions`` are (relative path, true, predicted, confidence) per
    test image. Not yet a finished run: ``seal`` marks it so, once the report is written too."""
    path = Path(path)
    (path / "head").mkdir(parents=True, exist_ok=True)
    (path / CHECKSUMS).unlink(missing_ok=True)
    write_json(path / "params.json", params.to_dict())
    write_json(path / "metrics.json", metrics.to_dict())
    write_csv(path / "test_predictions.csv", ["path", "true", "predicted", "confidence"],
              ([os.fsencode(rel).decode("utf-8", "backslashreplace"), true, predicted, f"{confidence:.6f}"]
               for rel, true, predicted, confidence in predictions))
    save_head(estimator, path / "head")
    return Run(path, params, metrics, estimator)


def seal(run: Run) -> Run:
    """``checksums.json``, written last: until it exists the directory is not a finished run."""
    write_json(run.path / CHECKSUMS, {name: sha256_file(run.path / name) for name in TRUSTED})
    return run


def load_run(path: str | os.PathLike, verify: bool = True) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run {path} does not exist: see `featcache runs`")
    if not (path / CHECKSUMS).is_file() or not (path / "params.json").is_file():
        raise RunError(f"{path} is not a finished featcache run (no {CHECKSUMS}): pick one from `featcache runs`")
    try:
        recorded = json.loads((path / CHECKSUMS).read_text())
        if verify:
            for name in TRUSTED:
                target = path / name
                if not target.is_file():
                    raise RunError(f"run {path.name} is missing {name}: fit again (`featcache fit`)")
                if sha256_file(target) != recorded.get(name):
                    raise RunError(f"run {path.name}: {name} was altered after the run was saved (checksum differs): fit again")
        params = RunParams.from_dict(json.loads((path / "params.json").read_text()))
        metrics = RunMetrics.from_dict(json.loads((path / "metrics.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(f"run {path} is unreadable ({type(err).__name__}: {err}): fit again") from None
    return Run(path, params, metrics)


def check_features(run: Run) -> None:
    """Stop if the run's feature set is still on disk but damaged (a missing one is only noted)."""
    path = Path(run.params.features.path)
    if path.is_file():
        try:
            open_verified(path).close()
        except DamagedError as err:
            fsid = run.params.feature_id
            raise RunError(f"the feature set {fsid} of run {run.name} is damaged ({err.reason[:120]}): "
                           f"`featcache cache rm {fsid}`, extract again and refit") from None


def list_runs(runs_dir: Path) -> list[Run]:
    if not Path(runs_dir).is_dir():
        return []
    out = []
    for child in sorted(Path(runs_dir).iterdir()):
        if (child / CHECKSUMS).is_file():
            try:
                out.append(load_run(child, verify=False))
            except RunError:
                continue
    return out


def latest(runs_dir: Path) -> Path:
    found = list_runs(runs_dir)
    if not found:
        raise RunError(f"no finished runs in {runs_dir}: `featcache fit` makes one, or pass --run / --runs-dir")
    return max(found, key=lambda r: r.params.created).path
