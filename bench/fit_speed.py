"""Fit speed at a few thousand images: the default ``featcache.fit`` next to GridSearchCV(LinearSVC).

Issue 14: "many heads in seconds" at 4,000 images. For pooled features (4,000 x 1,280) and flattened
maps (4,000 x 62,720, EfficientNet-Lite0's 1280x7x7), this times, in one process and one after the
other on the same in-memory features, the same 10 folds and the same test images:

* ours: ``featcache.fit()`` with its defaults (the svm head, its C grid, 10 folds), the CLI's code
  path from the loaded feature set to the saved run (search, refit, test scoring, run files, report);
  optionally other heads (``--heads svm,ridge``), with theirs (ridge: 11 alphas, 5 folds; the test
  images are the same for every head);
* reference: the seed tutorials' ``GridSearchCV(LinearSVC(), {"C": [0.01, 0.1, 1, 10, 100]}, cv=10)``
  on the raw features (refit on the CV images, scored on the test images);
* with ``--same-objective``: the same GridSearchCV on the L2-normalised features the svm head sees,
  so its per-fold CV scores are those of the very objective our svm solves (they must agree up to
  liblinear's stopping tolerance).

Data: real photos, 16 classes. 5,000 drawn (seeded) from clothing10 (3,781 photos, 10 classes) and
trashnet (2,527 photos, 6 classes) under /work/datasets, as a folder of symlinks; featcache's
default stratified 20% test split leaves 4,000 images for the search. Features through the offline
pretrained efficientnet_lite0, extracted once into bench/out/cache-fit (about 4 + 6 minutes here).

    python bench/fit_speed.py                     # both shapes; the maps reference takes ~40 min
    python bench/fit_speed.py --only pooled       # the pooled features (~5 min with the reference)
    python bench/fit_speed.py --skip-reference    # ours only (seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Others, machine, out_dir, table  # noqa: E402

GRID = {"C": [0.01, 0.1, 1, 10, 100]}
SETS = {"clothing": Path("/work/datasets/clothing10"), "trash": Path("/work/datasets/trashnet")}


def photos(n: int = 5000, seed: int = 0) -> Path:
    """``n`` photos drawn from clothing10 + trashnet (16 classes), as symlinks ``<set>-<class>/<file>``."""
    root = out_dir() / "data" / f"photos16-{n}"
    if (root / ".complete").exists():
        return root
    files = []
    for prefix, src in SETS.items():
        if not src.is_dir():
            sys.exit(f"missing {src}: this bench reads the photo sets under /work/datasets (see its SOURCES.md)")
        files += [(f"{prefix}-{p.parent.name}", p) for p in sorted(src.rglob("*")) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    keep = np.sort(np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False))
    for i in keep:
        label, path = files[i]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path.parent.parent.name}-{path.name}").symlink_to(path)
    (root / ".complete").write_text("ok\n")
    return root


def features(data: Path, pool: str) -> tuple[str, Path]:
    import featcache

    cache = out_dir() / "cache-fit"
    result = featcache.extract(data, cache_dir=cache, pool=pool, progress_bar=True)
    return result.id, cache


def reference(X_cv, y_cv, folds, X_test, y_test) -> dict:
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    with Others() as noise, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, cpu = time.perf_counter(), time.process_time()
        search = GridSearchCV(LinearSVC(), GRID, cv=folds, n_jobs=1).fit(X_cv.reshape(len(X_cv), -1), y_cv)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    accuracy = float(np.mean(search.predict(X_test.reshape(len(X_test), -1)) == y_test))
    splits = np.array([search.cv_results_[f"split{f}_test_score"] for f in range(len(folds))]).T
    return {"seconds": seconds, "cpu": cpu, "test": accuracy, "best": search.best_params_["C"], "others": noise.cores,
            "cv": float(search.best_score_), "splits": splits, "warnings": sum("converge" in str(w.message) for w in caught)}


def ours(head: str, data, runs: Path) -> dict:
    import featcache

    with Others() as noise:
        start, cpu = time.perf_counter(), time.process_time()
        run = featcache.fit(head=head, loaded=data, runs_dir=runs, progress_bar=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = run.metrics
    splits = np.array([m.cv_results[f"split{f}_test_score"] for f in range(run.params.cv)]).T
    return {"seconds": seconds, "cpu": cpu, "test": run.test_accuracy, "best": m.best_params, "cv": m.best_cv_mean,
            "search": m.search_seconds, "refit": m.refit_seconds, "others": noise.cores, "splits": splits,
            "folds": run.params.cv}


def compare(name: str, fsid: str, cache: Path, heads: list[str], skip_reference: bool, same_objective: bool) -> list[list]:
    from featcache.fitting.pipeline import load_features
    from featcache.fitting.splits import make_split

    start = time.perf_counter()
    data = load_features(fsid, cache, say=False)
    load = time.perf_counter() - start
    split = make_split(*data.manifest, data.paths, data.y, data.class_names, cv=10, seed=0)  # fit's defaults
    X_cv, y_cv = data.X[split.cv_rows], data.y[split.cv_rows]
    X_test, y_test = data.X[split.test_rows], data.y[split.test_rows]
    shape = f"{len(X_cv):,} x {int(np.prod(X_cv.shape[1:])):,}"
    print(f"\n[{name}] CV {shape}, test {len(X_test)}, {len(data.class_names)} classes; reading and checking "
          f"the feature set took {load:.1f} s", flush=True)
    rows, mine = [], {}
    for head in heads:
        mine[head] = r = ours(head, data, out_dir() / "runs-fit")
        print(f"  featcache fit --head {head}: {r['seconds']:.1f} s (cpu {r['cpu']:.1f}; search {r['search']:.1f} + refit "
              f"{r['refit']:.2f}), {r['folds']}-fold CV {r['cv']:.4f}, test {r['test']:.4f}, best {r['best']}, "
              f"others {r['others']:.2f} cores", flush=True)
    if skip_reference:
        return [[name, shape, h, f"{r['seconds']:.1f} ({r['cpu']:.1f})", "-", "-", f"{r['cv']:.4f}", f"{r['test']:.4f}",
                 "-", "-", f"{r['others']:.2f}"] for h, r in mine.items()]
    ref = reference(X_cv, y_cv, split.folds, X_test, y_test)
    print(f"  reference GridSearchCV(LinearSVC()) on the raw features: {ref['seconds']:.1f} s (cpu {ref['cpu']:.1f}), "
          f"CV {ref['cv']:.4f}, test {ref['test']:.4f}, best C={ref['best']}, {ref['warnings']} ConvergenceWarnings, "
          f"others {ref['others']:.2f} cores", flush=True)
    for head, r in mine.items():
        ratio, cpu_ratio = ref["seconds"] / r["seconds"], ref["cpu"] / r["cpu"]
        print(f"  {head}: {ratio:.1f}x faster than the reference ({cpu_ratio:.1f}x in CPU time); test accuracy "
              f"{100 * (r['test'] - ref['test']):+.2f} points, CV {100 * (r['cv'] - ref['cv']):+.2f} points", flush=True)
        rows.append([name, shape, head, f"{r['seconds']:.1f} ({r['cpu']:.1f})", f"{ref['seconds']:.1f} ({ref['cpu']:.1f})",
                     f"{ratio:.1f}x ({cpu_ratio:.1f}x)", f"{r['cv']:.4f}", f"{r['test']:.4f}", f"{ref['cv']:.4f}",
                     f"{ref['test']:.4f}", f"{r['others']:.2f} / {ref['others']:.2f}"])
    if same_objective and "svm" in mine:
        from sklearn.preprocessing import normalize

        flat = lambda a: normalize(a.reshape(len(a), -1))  # noqa: E731  (the svm head's rows)
        same = reference(flat(X_cv), y_cv, split.folds, flat(X_test), y_test)
        diff = np.abs(same["splits"] - mine["svm"]["splits"])
        print(f"  same objective: GridSearchCV(LinearSVC()) on the L2-normalised rows: {same['seconds']:.1f} s, "
              f"CV {same['cv']:.4f}, test {same['test']:.4f}, best C={same['best']}; per-fold accuracies differ from "
              f"the svm head's by at most {diff.max():.4f} ({int(np.sum(diff > 0))} of {diff.size} (C, fold) cells differ; "
              f"liblinear stops at tol=1e-4, {same['warnings']} ConvergenceWarnings); {same['seconds'] / mine['svm']['seconds']:.1f}x",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["pooled", "maps"], default=None)
    parser.add_argument("--heads", default="svm", help="comma-separated heads to time with featcache.fit (default: svm)")
    parser.add_argument("--skip-reference", action="store_true", help="time featcache only")
    parser.add_argument("--same-objective", action="store_true",
                        help="also run GridSearchCV(LinearSVC) on the L2-normalised rows and compare per-fold scores")
    args = parser.parse_args()
    print(machine(), flush=True)
    data = photos()
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    rows = []
    for name, pool in (("pooled", "avg"), ("maps", "none")):
        if args.only in (None, name):
            rows += compare(name, *features(data, pool), heads, args.skip_reference, args.same_objective)
    table(["features", "CV x dims", "head", "featcache fit s (cpu)", "GridSearchCV s (cpu)", "speed-up (cpu)", "CV acc",
           "test acc", "ref CV acc", "ref test acc", "others (ours / ref)"], rows,
          title="featcache.fit (defaults) vs GridSearchCV(LinearSVC), 10 folds")


if __name__ == "__main__":
    main()
