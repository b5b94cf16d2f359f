"""What a person looks at in a fit report: the misclassified test images, worst first, and a 2-D map
of the feature set coloured by class with the misclassified marked; and what ``--exclude`` changed.

The map is computed when the run is fitted (``write_map``: a PCA of the pooled, L2-normalised
features, saved as ``map.csv`` in the run), so re-rendering a report never needs the feature set.
PCA rather than t-SNE or UMAP: it costs well under a second even at 100,000 rows, is deterministic,
and its axes mean the same in every run of a feature set; a neighbour embedding would add tens of
seconds to every fit. Plots use matplotlib's ``Figure`` API (no pyplot state, no backend switch).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from featcache.core.errors import RunError
from featcache.core.files import read_csv, write_csv
from featcache.core.text import Code, display, printable
from featcache.report.gallery import Card, Thumbnails
from featcache.report.plots import figure, save
from featcache.store.pooling import pool_rows, unit_rows

MAP_FILE = "map.csv"
MAP_COLUMNS = ["path", "x", "y", "label", "role", "predicted"]  # then "explained=PC1,PC2" (fractions of the variance)
MAX_MISCLASSIFIED = 60
MAX_EXCLUDED_LISTED = 50


def write_map(path: Path, X: np.ndarray, paths: list[str], labels: np.ndarray, class_names: list[str],
              test_rows: np.ndarray, cv_rows: np.ndarray, predicted: dict[int, str], seed: int = 0) -> Path | None:
    """2-D PCA coordinates of the rows the run used (``map.csv``); None if there are fewer than 3."""

    used = np.concatenate([cv_rows, test_rows])
    if len(used) < 3:
        return None
    # Pooled a block of rows at a time: a full copy of the used rows of flattened maps is ~1 GB at 4,000 images.
    Z = np.empty((len(used), X.shape[1]), dtype=np.float32)
    for start in range(0, len(used), 256):
        Z[start:start + 256] = pool_rows(X[used[start:start + 256]])
    Z = unit_rows(Z)
    # Two components: the randomized solver is as good as exact here and ~10x faster on thousands of rows.
    pca = PCA(n_components=2, random_state=seed, svd_solver="randomized" if len(Z) > 1000 else "full")
    xy = pca.fit_transform(Z)
    explained = pca.explained_variance_ratio_.tolist()
    is_test = np.r_[np.zeros(len(cv_rows), bool), np.ones(len(test_rows), bool)]
    header = [*MAP_COLUMNS, f"explained={explained[0]:.6f},{explained[1]:.6f}"]
    return write_csv(path, header, (
        [display(paths[row]), f"{x:.5f}", f"{y:.5f}", class_names[int(labels[row])], "test" if test else "cv",
         predicted.get(row, "") if test else "", ""]
        for (x, y), row, test in zip(xy.tolist(), used.tolist(), is_test.tolist())))


def read_map(path: Path) -> tuple[list[dict], tuple[float, float]] | None:
    """The rows of ``map.csv`` (x and y as floats) and the variance its two axes explain; None if there is
    none. A file that is not what ``write_map`` wrote is a one-line RunError: the report can do without it."""
    if not path.is_file():
        return None
    try:
        header, *lines = read_csv(path) or [[]]
        if header[:6] != MAP_COLUMNS or len(header) < 7 or not header[6].startswith("explained="):
            raise ValueError(f"unexpected header {','.join(header[:7])[:80]!r}")
        first, second = (float(v) for v in header[6].removeprefix("explained=").split(","))
        rows = []
        for number, line in enumerate(lines, 2):
            row = dict(zip(MAP_COLUMNS, line))
            if len(row) < len(MAP_COLUMNS) or row["role"] not in ("test", "cv"):
                raise ValueError(f"line {number} is not path,x,y,label,role,predicted")
            row["x"], row["y"] = float(row["x"]), float(row["y"])
            if not math.isfinite(row["x"] + row["y"]):
                raise ValueError(f"line {number} has a coordinate that is not a finite number")
            rows.append(row)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        raise RunError(f"{path} is damaged ({err}): delete it to render the report without the feature map, "
                       "or fit again to make a new one") from None
    return rows, (first, second)


def plot_map(rows: list[dict], class_names: list[str], explained: tuple[float, float], out: Path) -> Path:
    colours = _colours(len(class_names))
    fig = figure((7.5, 5.2))
    ax = fig.subplots()
    x = np.array([r["x"] for r in rows])
    y = np.array([r["y"] for r in rows])
    label = np.array([r["label"] for r in rows])
    test = np.array([r["role"] == "test" for r in rows])
    wrong = test & np.array([r["predicted"] not in ("", r["label"]) for r in rows])
    for k, name in enumerate(class_names):
        mine = label == name
        ax.scatter(x[mine & ~test], y[mine & ~test], s=9, color=colours[k], alpha=0.45, linewidths=0)
        ax.scatter(x[mine & test], y[mine & test], s=26, color=colours[k], alpha=0.95, linewidths=0.4, edgecolors="white",
                   label=printable(name))
    if wrong.any():
        ax.scatter(x[wrong], y[wrong], s=95, facecolors="none", edgecolors="black", linewidths=1.3,
                   label=f"misclassified ({int(wrong.sum())})")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title("feature set, PCA of pooled features: small dots CV images, large dots test images", fontsize=9)
    ax.grid(alpha=0.25)
    legend = ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                       ncols=1 if len(class_names) <= 20 else 2)
    for text in legend.get_texts():
        text.set_parse_math(False)  # class names are text: a name like $\foo$ is not TeX to fail on
    return save(fig, out)


def _colours(n: int) -> list:
    from matplotlib import colormaps  # matplotlib: loaded when a plot is drawn

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def _misclassified(run) -> list[dict]:
    path = run.path / "test_predictions.csv"
    if not path.is_file():
        return []
    header, *rows = read_csv(path)
    wrong = [r for r in (dict(zip(header, row)) for row in rows) if r["true"] != r["predicted"]]
    return sorted(wrong, key=lambda r: (-float(r["confidence"]), r["path"]))


def blocks(run) -> list:
    """The report's gallery, map and exclusion blocks for ``run``."""
    out: list = []
    p, m = run.params, run.metrics
    wrong = _misclassified(run)
    out.append(("h", 2, f"Misclassified test images ({len(wrong)} of {m.test.n})"))
    if not wrong:
        out.append(("p", f"All {m.test.n} test images were classified correctly." if m.test.n else "There were no test images."))
    else:
        thumbs = Thumbnails(p.features.data_root, run.path)
        if not thumbs.available:
            out.append(("p", f"The images are not in {p.features.data_root} any more: only thumbnails made earlier are shown."))
        shown = wrong[:MAX_MISCLASSIFIED]
        text = "Most confident mistakes first"
        if len(wrong) > len(shown):
            text += f"; the first {len(shown)} of {len(wrong)} (all in test_predictions.csv)"
        out.append(("p", text + ". The confidence is the head's probability for the predicted class"
                    + (" (softmax of SVM decision values: it ranks, it is not calibrated)." if p.head == "svm" else ".")))
        cards = [Card(title=f"{k}. predicted {r['predicted']} ({float(r['confidence']):.2f})", text=f"true label: {r['true']}",
                      images=[(thumbs(r["path"]), r["path"])], tone="high" if float(r["confidence"]) >= 0.8 else "medium")
                 for k, r in enumerate(shown, 1)]
        out.append(("cards", cards))
    mapped = read_map(run.path / MAP_FILE)
    if mapped:
        rows, explained = mapped
        (run.path / "plots").mkdir(exist_ok=True)
        image = plot_map(rows, p.class_names, explained, run.path / "plots" / "map.png")
        out += [("h", 2, "Feature map"),
                ("p", f"PCA of the pooled, L2-normalised features of the {len(rows)} images this run used "
                      f"({explained[0] + explained[1]:.0%} of the variance in two axes); colour is the true class, "
                      "black rings mark misclassified test images."),
                ("img", f"plots/{image.name}", "2-D map of the feature set coloured by class")]
    if p.excluded:
        out += excluded_blocks(p.excluded)
    return out


def split_note(params) -> list:
    """The sentence added to the report's split line when files were excluded (inline content, see report.render)."""
    e = params.excluded
    if not e:
        return []
    source = "a list" if e["source"] == "list" else Code(Path(e["source"]).name)
    return [f" {len(e['paths'])} files excluded by --exclude ", source, f": {e['test']} from the test set, {e['cv']} from "
            "cross-validation" + (f", {e['without_features']} had no features anyway" if e.get("without_features") else "") + "."]


def excluded_blocks(e: dict) -> list:
    listed = e["paths"][:MAX_EXCLUDED_LISTED]
    more = f" (the first {len(listed)}; params.json lists all {len(e['paths'])})" if len(e["paths"]) > len(listed) else ""
    return [("h", 2, f"Excluded files ({len(e['paths'])})"),
            ("p", f"From {e['source']}" + (f" (sha256 {e['sha256'][:12]})" if e.get("sha256") else "")
                  + f": {e['test']} left the test set and {e['cv']} left cross-validation{more}."),
            ("table", ["path"], [[display(x)] for x in listed])]
