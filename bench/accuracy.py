"""Accuracy on real photos: the seed-style script against featcache's heads, with and without views.

Per photo set, on the same test images (featcache's split: the stored test/ split, else a
stratified 20% hold-out with seed 0) and, for the seed-style searches, the same 10 CV folds:

1. ``seed-maps``: the tutorials' ``GridSearchCV(LinearSVC(), {"C": [0.01, 0.1, 1, 10, 100]}, cv=10)``
   on the flattened 1280x7x7 EfficientNet-Lite0 maps, unscaled;
2. ``seed-pooled``: the same search on the average-pooled 1,280-d features;
3. ``fit-defaults``: ``featcache.fit()`` with its defaults on the maps (what ``featcache extract &&
   featcache fit`` gives);
4. ``best-no-views``: the best of a few featcache heads (chosen by CV accuracy, never by the test
   set) on features without views;
5. ``views-<recipe>``: that head family trained on every view of a set with views; one run gives
   the test accuracy with test-time averaging (``mean``) and without (``first``: view 0 only).

Every test accuracy comes with a 95% bootstrap interval over the test images, and every method is
compared with the seed-style script and with the best head without views by a paired bootstrap of
the difference (significant when its interval excludes 0).

Each cell (set x method) is saved as JSON under ``--out`` (default bench/out/accuracy/) when it
finishes and skipped when it exists, so an interrupted run resumes; ``--redo 'PATTERN'`` recomputes
matching cells (e.g. ``--redo '*views*'`` after the heads get faster). Feature sets are cached in
``--out``/cache (extraction is the slow part: one forward pass per view).

    python bench/accuracy.py                       # the four default sets (hours on 2 cores, resumable)
    python bench/accuracy.py --sets hymenoptera    # one set
    python bench/accuracy.py --stage extract       # only the feature sets
    python bench/accuracy.py --quick               # a smoke run: 120 hymenoptera photos, few views
    python bench/accuracy.py --sets myset=/path/to/photos   # your own ImageFolder
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HYMENOPTERA, REPO, machine, out_dir, subset  # noqa: E402

DATASETS = Path(os.environ.get("FEATCACHE_DATASETS", "/work/datasets"))
if not HYMENOPTERA.is_dir():  # a git worktree one level further down (../../shared)
    HYMENOPTERA = (REPO.parent.parent / "shared" / "data" / "hymenoptera").resolve()
# Where each default set comes from (bench/README.md; full notes in /work/datasets/SOURCES.md).
# None of them is in the repository: fetch them as said there and pass their folders.
SETS = {
    "hymenoptera": (HYMENOPTERA, "the PyTorch transfer-learning tutorial's ants/bees photos (398, 2 classes, "
                                 "train/val), ../shared/data/hymenoptera"),
    "clothing10": (DATASETS / "clothing10", "alexeygrigorev/clothing-dataset-small @ 11961516 (CC0): 3,781 photos, "
                                            "10 classes, train/validation/test"),
    "trashnet": (DATASETS / "trashnet", "TrashNet (Thung & Yang 2016, MIT) via congduytran12/Trash-Classification- @ "
                                        "00212f2c, dataset-resized/: 2,527 photos, 6 classes"),
    "oxford17flowers": (DATASETS / "oxford17flowers", "Oxford 17 Flowers (Nilsback & Zisserman 2006) via "
                                                      "yangxue0827/RCNN @ 4530523c, 17flowers/jpg: 1,360 photos, 17 classes"),
}
MODEL = "efficientnet_lite0"
RECIPES = ["flip", "crops:5", "rrc:8"]
SCALE_SETS = ("hymenoptera", "oxford17flowers")  # also rrc:8 with ImageNet's scale 0.08, to choose the default
SEED_GRID = {"C": [0.01, 0.1, 1, 10, 100]}


def feature_configs(name: str, quick: bool) -> dict[str, dict]:
    """The extraction settings each method needs, by a short name."""
    configs = {"maps": {"pool": "none"}, "pooled": {"pool": "avg"}}
    for recipe in (["flip", "rrc:4"] if quick else RECIPES):
        configs[f"pooled+{recipe}"] = {"pool": "avg", "views": recipe}
    if name in SCALE_SETS and not quick:
        configs["pooled+rrc:8:scale=0.08"] = {"pool": "avg", "views": "rrc:8:scale=0.08"}
    return configs


def extract(root: Path, settings: dict, cache: Path):
    """A cached feature set (extracted now if missing) and the seconds its extraction took."""
    import featcache

    result = featcache.extract(root, model=MODEL, cache_dir=cache, progress_bar=sys.stderr.isatty(), **settings)
    with result.open() as fs:
        seconds = fs.meta.get("extract_seconds") or result.seconds
        rate = fs.meta.get("images_per_second")
    print(f"  {settings}: {result.summary()}", flush=True)
    return result.id, float(seconds), rate


def parse_sets(items: list[str] | None, quick: bool) -> dict[str, tuple[Path, str]]:
    if quick:
        return {"hymenoptera-120": (subset(HYMENOPTERA, 120), "120 of the hymenoptera photos (smoke run)")}
    if not items:
        return {k: v for k, v in SETS.items()}
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if eq:
            out[name] = (Path(path), f"{path} (given)")
        elif name in SETS:
            out[name] = SETS[name]
        else:
            sys.exit(f"unknown set {name!r}: use {', '.join(SETS)} or NAME=PATH")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", help="set names (default: all four) or NAME=PATH of an ImageFolder")
    parser.add_argument("--stage", choices=["extract", "all"], default="all")
    parser.add_argument("--out", type=Path, default=None, help="results and cache folder [bench/out/accuracy]")
    parser.add_argument("--redo", action="append", default=[], help="recompute cells matching this glob (SET/METHOD)")
    parser.add_argument("--only", action="append", default=[],
                        help="compute only cells matching this glob (SET/METHOD); others are used if saved, and the "
                             "table needs them all (run several at once on different cells)")
    parser.add_argument("--quick", action="store_true", help="a smoke run on 120 photos")
    args = parser.parse_args()
    out = args.out or out_dir() / ("accuracy-quick" if args.quick else "accuracy")
    cache = out / "cache"
    sets = parse_sets(args.sets, args.quick)
    print(machine(), flush=True)
    report = [f"Accuracy on real photos ({MODEL}; bench/accuracy.py{' --quick' if args.quick else ''}); "
              "**sig**: the 95% paired bootstrap interval of the difference excludes 0."]
    for name, (root, source) in sets.items():
        print(f"\n== {name}: {root}\n   from: {source}", flush=True)
        if not root.is_dir():
            print(f"   missing {root}: skipped (see bench/README.md for where to get it)", flush=True)
            continue
        extracted = {key: extract(root, settings, cache) for key, settings in feature_configs(name, args.quick).items()}
        if args.stage == "extract":
            continue
        cells = run_cells(name, root, extracted, out, args)
        if any(cells.get(m) is None for m in ("seed-maps", "seed-pooled", "best-no-views")) or any(c is None for c in cells.values()):
            print(f"   {name}: some cells are not saved yet; no table", flush=True)
            continue
        report += table(name, cells)
        (out / "accuracy.md").write_text("\n".join(report) + "\n")
    print("\n".join(report), flush=True)


# ----------------------------------------------------------------------------------------- cells
# Candidates for "featcache's best head" (chosen by 5-fold CV accuracy, never by the test set):
# (label, feature set, head, normalize, C grid). featcache's "standard" divides by sqrt(d) too, so its
# C means what it means for "l2" (scikit-learn's StandardScaler would want C ~1,000x smaller); each grid
# spans six decades, wide enough that no best value sat on an edge in a first run.
CANDIDATES = [
    ("logreg standard, pooled", "pooled", "logreg", "standard", [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]),
    ("svm standard, pooled", "pooled", "svm", "standard", [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]),
    ("logreg l2, pooled", "pooled", "logreg", "l2", [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]),
    ("svm l2, pooled", "pooled", "svm", "l2", [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]),
]
CV = 5


class Cell:
    """One (set, method) result, saved as JSON when finished and reused when present."""

    def __init__(self, out: Path, set_name: str, method: str, redo: list[str], config=None):
        self.path = out / "cells" / f"{set_name}--{method.replace(':', '_').replace('/', '_')}.json"
        self.key = f"{set_name}/{method}"
        self.redo = any(fnmatch.fnmatch(self.key, pattern) for pattern in redo)
        self.config = json.loads(json.dumps(config))  # what the cell computes: a saved cell of another is redone

    def load(self) -> dict | None:
        if self.redo or not self.path.is_file():
            return None
        saved = json.loads(self.path.read_text())
        recorded = saved.get("config", {"features": saved.get("features")})  # cells saved before configs were
        return saved if recorded == self.config else None

    def save(self, result: dict) -> dict:
        result = {**result, "cell": self.key, "config": self.config, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "commit": _commit(), "load_average": os.getloadavg()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, self.path)
        return result


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def seed_style(data, split) -> dict:
    """The tutorials' search on the raw features: GridSearchCV(LinearSVC(), C 0.01..100, cv=10), refit, test."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    X_cv = data.X[split.cv_rows].reshape(len(split.cv_rows), -1)
    X_test = data.X[split.test_rows].reshape(len(split.test_rows), -1)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        search = GridSearchCV(LinearSVC(), SEED_GRID, cv=10, n_jobs=1).fit(X_cv, data.y[split.cv_rows])
        predicted = search.predict(X_test)
    seconds = time.perf_counter() - start
    correct = predicted == data.y[split.test_rows]
    return {"fit_seconds": seconds, "correct": correct.tolist(), "cv": float(search.best_score_),
            "best": {k: float(v) for k, v in search.best_params_.items()}, "dims": int(X_cv.shape[1]),
            "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught)}


def fit_cell(fsid, cache, runs, data, split, head, grid, fixed, cv, views_at_test="mean") -> dict:
    """``featcache.fit`` through the public API; per-image correctness with and without views."""
    import featcache
    from featcache.fitting.evaluation import aggregate

    start = time.perf_counter()
    run = featcache.fit(head=head, features=fsid, params=grid, head_params=fixed, cv=cv, cache_dir=cache, runs_dir=runs,
                        progress_bar=False, loaded=data, views_at_test=views_at_test)
    wall = time.perf_counter() - start
    model, n = run.estimator, data.n_views
    X_test, y_img = data.X[split.test_rows], data.y[split.test_rows][::n]
    result = {"run": str(run.path), "fit_seconds": wall, "cv": run.metrics.best_cv_mean, "best": run.metrics.best_params,
              "head": head, "fixed": fixed or {}, "grid": grid, "test": run.test_accuracy}
    for how in ("mean", "first"):
        result[f"correct_{how}"] = (aggregate(model, X_test, n, how)[0] == y_img).tolist()
    result["correct"] = result[f"correct_{views_at_test}"]
    assert abs(np.mean(result["correct"]) - run.test_accuracy) < 1e-9
    return result


def run_cells(name: str, root: Path, extracted: dict, out: Path, args) -> dict:
    import gc

    from featcache.fitting.pipeline import load_features
    from featcache.fitting.splits import make_split

    cache, runs = out / "cache", out / "runs"
    cells: dict[str, dict] = {}
    loaded: dict[str, object] = {}

    def features(key: str):
        if key not in loaded:
            loaded.clear()  # one set in memory at a time (flattened maps are ~1 GB)
            gc.collect()
            loaded[key] = load_features(extracted[key][0], cache, say=False)
        return loaded[key]

    def split_of(data, cv):
        return make_split(*data.manifest, data.paths, data.y, data.class_names, cv=cv, seed=0, row_views=data.views)

    def cell(method: str, compute, feature_key: str, config=None) -> dict | None:
        c = Cell(out, name, method, args.redo, {"features": extracted[feature_key][0], **(config or {})})
        found = c.load()
        if found is None and args.only and not any(fnmatch.fnmatch(c.key, p) for p in args.only):
            print(f"  [{name}] {method}: not saved, not computed here (--only)", flush=True)
            return None
        if found is None:
            print(f"  [{name}] {method} ...", flush=True)
            found = c.save({**compute(), "features": extracted[feature_key][0], "extract_seconds": extracted[feature_key][1]})
        else:
            print(f"  [{name}] {method}: saved {found['saved']}", flush=True)
        cells[method] = found
        return found

    for key, method in (("maps", "seed-maps"), ("pooled", "seed-pooled")):
        cell(method, lambda: seed_style(features(key), split_of(features(key), 10)), key)
    cell("fit-defaults", lambda: _defaults(features("maps"), extracted["maps"][0], cache, runs, split_of), "maps")

    candidates = {}
    for label, key, head, normalize, grid in CANDIDATES:
        candidates[label] = cell(f"candidate {label}", lambda: fit_cell(
            extracted[key][0], cache, runs, features(key), split_of(features(key), CV), head, {"C": grid},
            {"normalize": normalize}, CV), key, {"head": head, "normalize": normalize, "grid": grid})
    if any(c is None for c in candidates.values()) or cells.get("fit-defaults") is None:
        return cells
    best_label = max(candidates, key=lambda k: candidates[k]["cv"])
    best = candidates[best_label]
    defaults = cells["fit-defaults"]
    overall = ("fit-defaults", defaults) if defaults["cv"] > best["cv"] else (f"candidate {best_label}", best)
    cells["best-no-views"] = {**overall[1], "chosen": overall[0]}
    cells["best-pooled"] = {**best, "chosen": f"candidate {best_label}"}  # the head the views rows train
    print(f"  [{name}] best head without views (by CV): {overall[0]} (CV {overall[1]['cv']:.4f})", flush=True)

    for key in extracted:
        if "+" not in key:
            continue
        recipe = key.split("+", 1)[1]
        cell(f"views {recipe}", lambda: fit_cell(
            extracted[key][0], cache, runs, features(key), split_of(features(key), CV), best["head"], best["grid"],
            best["fixed"], CV), key, {"head": best["head"], "grid": best["grid"], "fixed": best["fixed"]})
    loaded.clear()
    return cells


def _defaults(data, fsid, cache, runs, split_of) -> dict:
    """``featcache fit`` exactly as the CLI runs it without options (its split, folds and grid)."""
    import featcache
    from featcache.config.fit import default_cv

    start = time.perf_counter()
    run = featcache.fit(features=fsid, cache_dir=cache, runs_dir=runs, progress_bar=False, loaded=data)
    wall = time.perf_counter() - start
    split = split_of(data, default_cv(run.params.head))
    correct = run.estimator.predict(data.X[split.test_rows]) == data.y[split.test_rows]
    assert abs(np.mean(correct) - run.test_accuracy) < 1e-9
    return {"run": str(run.path), "fit_seconds": wall, "cv": run.metrics.best_cv_mean, "best": run.metrics.best_params,
            "head": run.params.head, "fixed": run.params.fixed_params, "grid": run.params.grid, "correct": correct.tolist(),
            "test": run.test_accuracy}


# -------------------------------------------------------------------------------------- the table
def interval(correct, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the accuracy, resampling test images."""
    c = np.asarray(correct, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(c), size=(n, len(c)))
    means = c[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def versus(a, b) -> tuple[float, float, float, bool]:
    """Difference a - b, its paired 95% bootstrap interval, and whether it excludes 0."""
    from featcache.sweeps.leaderboard import bootstrap_interval

    a, b = np.asarray(a, float), np.asarray(b, float)
    lo, hi = bootstrap_interval(a, b)
    return float(a.mean() - b.mean()), lo, hi, lo > 0 or hi < 0


def table(name: str, cells: dict) -> list[str]:
    rows = []
    seed, best, pooled = cells["seed-maps"]["correct"], cells["best-no-views"]["correct"], cells["best-pooled"]["correct"]
    order = (["seed-maps", "seed-pooled", "fit-defaults", "best-no-views", "best-pooled"]
             + sorted(m for m in cells if m.startswith("views ")))
    for method in order:
        c = cells[method]
        variants = [("", c["correct"])]
        if method.startswith("views "):
            variants = [(" (mean over views)", c["correct_mean"]), (" (first view only)", c["correct_first"])]
        for suffix, correct in variants:
            lo, hi = interval(correct)
            what = _describe(method, c)
            sig = lambda d: f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]{' **sig**' if d[3] else ''}"  # noqa: E731
            vs_pooled = sig(versus(correct, pooled)) if method.startswith("views ") else ""
            rows.append(f"| {method}{suffix} | {what} | {np.mean(correct):.4f} [{lo:.3f}, {hi:.3f}] | "
                        f"{c['extract_seconds']:.0f} | {c['fit_seconds']:.1f} | "
                        f"{'-' if method == 'seed-maps' else sig(versus(correct, seed))} | "
                        f"{'-' if method == 'best-no-views' else sig(versus(correct, best))} | {vs_pooled} |")
    n = len(seed)
    return [f"\n### {name} ({n} test images)\n",
            "| method | head (chosen by CV) | test accuracy [95% bootstrap] | extract s | fit s | vs seed-maps [95%] "
            "| vs best-no-views [95%] | vs best-pooled: what views gain [95%] |",
            "|---|---|---|---|---|---|---|---|"] + rows


def _describe(method: str, c: dict) -> str:
    if method.startswith("seed"):
        return f"LinearSVC raw, {c['dims']}-d, best C={c['best']['C']:g}"
    best = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["best"].items())
    fixed = ", ".join(f"{k}={v}" for k, v in (c.get("fixed") or {}).items() if k != "random_state")
    chosen = f" ({c['chosen']})" if "chosen" in c else ""
    return f"{c['head']} {fixed} {best}{chosen}".replace("  ", " ")


if __name__ == "__main__":
    main()
