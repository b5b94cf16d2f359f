"""Run directories: everything one fit leaves behind, and reading it back safely.

    <runs>/<time>-<head>-<feature set>/
        params.json           head, grid, cv, split, seed, feature-set id and metadata
        metrics.json          every candidate x fold (scikit-learn cv_results_ columns), best
                              parameters, test accuracy, per-class precision/recall/F1, confusion
        test_predictions.csv  path, true class, predicted class, confidence for every test image
        head/head.safetensors + head/head.json    the fitted head, no pickle
        report.md, report.html, plots/*.png
        checksums.json        sha256 of the files above; written last, so it marks a finished run

``load_run`` refuses a directory without checksums (not a run, or interrupted) and any file whose
hash changed since it was saved.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from classifiers import load_head, save_head, scores

from .errors import RunError
from .files import sha256_file, write_json

CHECKSUMS = "checksums.json"
TRUSTED = ("params.json", "metrics.json", "test_predictions.csv", "head/head.safetensors", "head/head.json")


@dataclass
class Run:
    path: Path
    params: dict
    metrics: dict
    estimator: object = None  # the fitted head, in memory right after ``fit`` (else ``head()`` loads it)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def test_accuracy(self) -> float:
        return self.metrics["test"]["accuracy"]

    def head(self):
        return load_head(self.path / "head")

    def summary(self) -> str:
        m = self.metrics
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in m["best_params"].items()) or "defaults"
        return (
            f"run {self.path}: {self.params['head']} on feature set {self.params['features']['id']} "
            f"({self.params['features']['model']} {self.params['features']['layer']}); best {best}; "
            f"CV accuracy {m['best_cv_mean']:.4f} +- {m['best_cv_std']:.4f}; "
            f"test accuracy {self.test_accuracy:.4f} ({m['test']['n']} images)"
        )


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


FEATURE_META = ("id", "model", "family", "arch", "weights", "weights_kind", "weights_path", "layer", "pool", "preprocess",
                "decode", "dtype", "precision", "feature_shape", "data_root", "manifest_sha256", "content_sha256",
                "created", "key", "n_rows", "n_skipped", "images_per_second", "extract_seconds", "versions")


def save_run(runs_dir: Path, run_dir, head, estimator, grid, fixed, result, split, data, X_test, y_test,
             search_seconds, n_jobs, backend) -> Run:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from . import report

    path = Path(run_dir) if run_dir else new_run_dir(runs_dir, head, data.meta["id"])
    (path / "head").mkdir(parents=True, exist_ok=True)
    (path / CHECKSUMS).unlink(missing_ok=True)
    names = data.class_names
    predicted, confidence = scores(estimator, X_test) if len(X_test) else (np.array([], int), np.array([]))
    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_test, predicted, labels=labels, zero_division=0)
    table = result.cv_results
    best = result.best_index
    params_doc = {
        "head": head,
        "grid": grid,
        "fixed_params": fixed,
        "head_params": estimator.get_params(),
        "cv": split.info["cv"],
        "split": split.info,
        "seed": split.info["seed"],
        "n_jobs": n_jobs,
        "backend": backend,
        "class_names": names,
        "features": {k: data.meta.get(k) for k in FEATURE_META} | {"path": str(data.path)},
        "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),  # orders runs made within one second
    }
    metrics = {
        "cv_results": table,
        "best_index": best,
        "best_params": result.best_params,
        "best_cv_mean": table["mean_test_score"][best],
        "best_cv_std": table["std_test_score"][best],
        "best_on_edge": edge_params(grid, table, best),
        "search_seconds": round(search_seconds, 3),
        "refit_seconds": round(result.refit_seconds, 3),
        "fit_seconds": round(search_seconds + result.refit_seconds, 3),
        "test": {
            "n": int(len(y_test)),
            "accuracy": float(accuracy_score(y_test, predicted)) if len(y_test) else float("nan"),
            "per_class": {
                names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                for i in labels
            },
            "confusion_matrix": confusion_matrix(y_test, predicted, labels=labels).tolist() if len(y_test) else [],
        },
    }
    if hasattr(estimator, "history_"):
        metrics["history"] = estimator.history_
    write_json(path / "params.json", params_doc)
    write_json(path / "metrics.json", metrics)
    test_paths = [data.paths[i] for i in split.test_rows]
    with open(path / "test_predictions.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for rel, t, pr, c in zip(test_paths, y_test, predicted, confidence):
            writer.writerow([os.fsencode(rel).decode("utf-8", "backslashreplace"), names[int(t)], names[int(pr)], f"{c:.6f}"])
    save_head(estimator, path / "head")
    run = Run(path, params_doc, metrics, estimator)
    report.render_run(run)
    write_json(path / CHECKSUMS, {name: sha256_file(path / name) for name in TRUSTED})
    return run


def edge_params(grid: dict[str, list], table: dict, best_index: int) -> list[str]:
    """Searched numeric parameters whose best value is the smallest or largest tried and beats
    its inner neighbour (a plateau reaching the edge is no sign that the optimum lies outside)."""
    best = table["params"][best_index]
    mean = np.asarray(table["mean_test_score"])
    edges = []
    for name, values in grid.items():
        numbers = sorted({v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if len(numbers) < 3 or best.get(name) not in (numbers[0], numbers[-1]):
            continue
        inner = numbers[1] if best[name] == numbers[0] else numbers[-2]
        same_others = [i for i, p in enumerate(table["params"])
                       if p.get(name) == inner and all(p.get(k) == v for k, v in best.items() if k != name)]
        if same_others and mean[best_index] > mean[same_others[0]] + 1e-3:
            edges.append(name)
    return edges


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
        params = json.loads((path / "params.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"run {path} is unreadable ({err}): fit again") from None
    return Run(path, params, metrics)


def check_features(run: Run) -> None:
    """Stop if the run's feature set is still on disk but damaged (a missing one is only noted)."""
    from .store import verify

    path = Path(run.params["features"]["path"])
    if path.is_file():
        problems = verify(path)
        if problems:
            fsid = run.params["features"]["id"]
            raise RunError(f"the feature set {fsid} of run {run.name} is damaged ({problems[0][:120]}): "
                           f"`featcache cache rm {fsid}`, extract again and refit")


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
    return max(found, key=lambda r: r.params["created"]).path
