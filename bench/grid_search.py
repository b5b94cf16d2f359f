"""Grid search: ``featcache fit --head svm`` against the reference GridSearchCV(LinearSVC).

Reference (the seed tutorials' code): ``GridSearchCV(LinearSVC(), {"C": [0.01, 0.1, 1, 10, 100]},
cv=10)`` on the raw, unscaled features, refit on the CV images, scored on the test images.
featcache: the svm head (rows L2-normalised; wide features solved through one shared Gram matrix),
same C grid, the same 10 folds and the same test images. Both run one after the other in this
process, so the ratio is measured side by side.

Data: realistic features of real photos. The 398 hymenoptera photos are augmented (random resized
crops, flips, small rotations, colour jitter) into a train/ and a test/ split so that the sizes
match the issue: pooled EfficientNet-Lite0 features (~4k x 1,280) and wide, flattened maps
(~2k x 21,952 from EfficientNet-Lite0's blocks.4, 112x14x14: the closest pretrained layer we have
offline to vgg16's 25,088; the solver cost depends on the shape, not on the network).

    python bench/grid_search.py            # both shapes (about 20-40 minutes: the reference is slow)
    python bench/grid_search.py --quick    # a quarter of the images
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Others, hymenoptera, machine, out_dir  # noqa: E402

GRID = {"C": [0.01, 0.1, 1, 10, 100]}


def augmented(copies: int, seed: int = 0) -> Path:
    """``copies`` augmented versions of each hymenoptera photo: train/ from train, test/ from val."""
    from PIL import Image, ImageEnhance, ImageOps

    root = out_dir() / "data" / f"hymenoptera-aug{copies}"
    marker = root / ".complete"
    if marker.exists():
        return root
    rng = random.Random(seed)
    src = hymenoptera()
    for split, target in (("train", "train"), ("val", "test")):
        for path in sorted((src / split).rglob("*.jpg")):
            img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            img.thumbnail((640, 640))
            out = root / target / path.parent.name
            out.mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                w, h = img.size
                scale = rng.uniform(0.55, 1.0)
                cw, ch = int(w * scale), int(h * scale)
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                a = img.crop((x, y, x + cw, y + ch)).rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
                if rng.random() < 0.5:
                    a = ImageOps.mirror(a)
                a = ImageEnhance.Color(a).enhance(rng.uniform(0.7, 1.3))
                a = ImageEnhance.Brightness(a).enhance(rng.uniform(0.8, 1.2))
                a.save(out / f"{path.stem}_{k}.jpg", quality=88)
    marker.write_text("ok\n")
    return root


def features(data: Path, **kw):
    import featcache

    cache = out_dir() / "cache-grid"
    result = featcache.extract(data, cache_dir=cache, progress_bar=True, **kw)
    return result.id, cache


def reference(X_cv, y_cv, folds, X_test, y_test, dual="auto"):
    """The tutorials' search. ``dual=True`` was LinearSVC's default before scikit-learn 1.5 (the code
    the seed scripts were written against); since 1.5 the default "auto" picks the primal when
    images outnumber features."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    search = GridSearchCV(LinearSVC(dual=dual), GRID, cv=folds, n_jobs=1).fit(X_cv.reshape(len(X_cv), -1), y_cv)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(search.predict(X_test.reshape(len(X_test), -1)) == y_test))
    return seconds, accuracy, search.best_params_, search.cv_results_["mean_test_score"]


def compare(name: str, fsid: str, cache: Path, n_jobs: int) -> dict:
    import featcache
    from featcache.fitting.pipeline import load_features
    from featcache.fitting.splits import make_split

    data = load_features(fsid, cache, say=False)
    split = make_split(*data.manifest, data.paths, data.y, data.class_names, cv=10, seed=0)
    X_cv, y_cv = data.X[split.cv_rows], data.y[split.cv_rows]
    X_test, y_test = data.X[split.test_rows], data.y[split.test_rows]
    print(f"\n[{name}] CV {X_cv.shape[0]} x {int(np.prod(X_cv.shape[1:]))}, test {len(X_test)}", flush=True)
    timings = {}
    for n_jobs in sorted({1, n_jobs}):
        with Others() as noise:
            start = time.perf_counter()
            run = featcache.fit(head="svm", features=fsid, cache_dir=cache, runs_dir=out_dir() / "runs-grid", cv=10,
                                n_jobs=n_jobs, progress_bar=False, loaded=data)
            timings[n_jobs] = time.perf_counter() - start
        print(f"  featcache fit --head svm --n-jobs {n_jobs}: {timings[n_jobs]:.1f} s (search {run.metrics.search_seconds:.1f} s"
              f" + refit {run.metrics.refit_seconds:.1f} s + report), test accuracy {run.test_accuracy:.4f}, "
              f"best {run.metrics.best_params}, others used {noise.cores:.2f} cores", flush=True)
    ours = timings[1]
    references = {}
    duals = ["auto", True] if X_cv.shape[0] > int(np.prod(X_cv.shape[1:])) else ["auto"]  # n < d: "auto" is dual
    for dual in duals:
        with Others() as noise:
            references[dual] = reference(X_cv, y_cv, split.folds, X_test, y_test, dual=dual)
        seconds, acc, best, _ = references[dual]
        print(f"  reference GridSearchCV(LinearSVC(dual={dual!r})): {seconds:.1f} s, test accuracy {acc:.4f}, best {best}, "
              f"others used {noise.cores:.2f} cores; featcache is {seconds / ours:.1f}x faster "
              f"({seconds / timings[max(timings)]:.1f}x with --n-jobs {max(timings)})", flush=True)
    ref_seconds, ref_acc, _, ref_means = references[duals[-1]]
    row = {"name": name, "shape": f"{X_cv.shape[0]} x {int(np.prod(X_cv.shape[1:]))}", "ours": ours,
           "ours_parallel": timings[max(timings)], "n_jobs": max(timings), "ref": ref_seconds,
           "ref_auto": references["auto"][0], "speedup": ref_seconds / ours, "acc": run.test_accuracy, "ref_acc": ref_acc}
    print(f"  speed-up {row['speedup']:.1f}x against dual={duals[-1]!r} (target >= 10x); test accuracy difference "
          f"{100 * (row['acc'] - row['ref_acc']):+.2f} points (target within 1)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer augmented copies (a few minutes)")
    parser.add_argument("--n-jobs", type=int, default=2, help="also time featcache fit with this --n-jobs (the reference runs with 1)")
    parser.add_argument("--only", choices=["pooled", "wide"], default=None)
    args = parser.parse_args()
    print(machine(), flush=True)
    rows = []
    if args.only in (None, "pooled"):
        data = augmented(3 if args.quick else 10)
        rows.append(compare("pooled", *features(data, pool="avg"), args.n_jobs))
    if args.only in (None, "wide"):
        data = augmented(2 if args.quick else 5, seed=1)
        rows.append(compare("wide", *features(data, layer="blocks.4"), args.n_jobs))
    print("\n| features | CV x dims | reference dual=True s | reference dual='auto' s | featcache s (n-jobs 1 / N) | speed-up vs dual=True | test acc (ref -> featcache) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['shape']} | {r['ref']:.1f} | {r['ref_auto']:.1f} | {r['ours']:.1f} / {r['ours_parallel']:.1f} "
              f"| {r['speedup']:.1f}x | {r['ref_acc']:.4f} -> {r['acc']:.4f} |")


if __name__ == "__main__":
    main()
