"""A run's report and a side-by-side comparison of runs, as blocks rendered by ``report.render``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featcache.core.errors import RunError
from featcache.core.files import output_dir
from featcache.core.text import Code, Link, Strong, printable
from featcache.fitting import gallery as run_gallery
from featcache.fitting.runs import FeatureRef, Run, check_features, latest, load_run
from featcache.report.plots import figure, plot_confusion, plot_history, plot_param, save
from featcache.report.render import Block, params_text, write


def feature_line(f: FeatureRef) -> str:
    shape = "x".join(map(str, f.feature_shape or []))
    return f"{f.model} / {f.layer} / pool={f.pool} ({shape}, {f.dtype}, weights {f.weights})"


def run_blocks(run) -> list[Block]:
    p, m = run.params, run.metrics
    table, names = m.cv_results, p.class_names
    plots = run.path / "plots"
    plots.mkdir(exist_ok=True)
    f, split = p.features, p.split
    blocks: list[Block] = [
        ("p", ["Head ", Strong(p.head), " on feature set ", Code(f.id), f": {feature_line(f)}."]),
        ("p", [f"Split: {split['test']} (seed {p.seed}); {split['n_cv']} images in {p.cv}-fold "
               f"cross-validation, {split['n_test']} test images"
               + (f"; {split['dropped']} input files had no features (skipped at extraction)." if split.get('dropped') else "."),
               run_gallery.split_note(p)]),
        ("h", 2, "Result"),
        ("table", ["", "value"], [
            ["best parameters", params_text(m.best_params)],
            ["fixed parameters", params_text(p.fixed_params)],
            ["CV accuracy (mean +- std)", f"{m.best_cv_mean:.4f} +- {m.best_cv_std:.4f}"],
            ["test accuracy", f"{m.test.accuracy:.4f} ({m.test.n} images)"],
            ["search + refit time", f"{m.search_seconds:.2f} s + {m.refit_seconds:.2f} s"],
        ]),
    ]
    blocks += views_blocks(m)
    if m.best_on_edge:
        edge = [[", " if k else "", Code(n)] for k, n in enumerate(m.best_on_edge)]
        blocks.append(("p", ["Warning: the best value of ", edge,
                             " is at the edge of the grid; the optimum may lie outside it: widen the grid with --param."]))
    searched = [k[len("param_"):] for k in table if k.startswith("param_")]
    blocks += [("h", 2, "Grid search"), ("table", _grid_header(table, searched), _grid_rows(table, searched))]
    for name in searched:
        image = plot_param(table, name, plots / f"cv_{name}.png", f"{p.head}: CV accuracy vs {name}")
        if image:
            blocks.append(("img", f"plots/{image.name}", f"CV accuracy against {name}"))
    blocks += [("h", 2, "Test set"),
               ("table", ["class", "precision", "recall", "F1", "support"],
                [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                 for c, v in m.test.per_class.items()])]
    if m.test.confusion_matrix:
        blocks.append(("table", ["true \\ predicted"] + names,
                       [[names[i]] + row for i, row in enumerate(m.test.confusion_matrix)]))
        image = plot_confusion(m.test.confusion_matrix, names, plots / "confusion.png")
        blocks.append(("img", f"plots/{image.name}", "confusion matrix"))
    blocks += run_gallery.blocks(run)
    if m.history:
        image = plot_history(m.history, plots / "learning_curves.png")
        blocks += [("h", 2, "Learning curves"), ("img", f"plots/{image.name}", "MLP learning curves")]
    return blocks


def views_blocks(m) -> list[Block]:
    """With augmented views: test accuracy per image with and without test-time averaging."""
    v = m.views
    if not v:
        return []
    used = {"mean": f"mean over the {v['n']} views (test-time augmentation)", "first": "view 0 only (the plain crop)"}
    rows = [[[used[how], " ", Strong("(this run)")] if how == v["at_test"] else used[how], f"{acc:.4f}"]
            for how, acc in v["test_accuracy"].items()]
    return [("h", 2, "Views"),
            ("p", [f"Feature set with {v['n']} views per image (", Code(v["recipe"]),
                   ("): every view of a training image trained the head; CV folds and the test set hold whole images and "
                    "are scored per image ("), Code(f"--views-at-test {v['at_test']}"), ")."]),
            ("table", ["scored on", "test accuracy"], rows)]


def _grid_header(table: dict, searched: list[str]) -> list[str]:
    folds = sum(1 for k in table if k.startswith("split") and k.endswith("_test_score"))
    return ["rank"] + searched + ["CV mean", "CV std", "fit s"] + [f"fold {k}" for k in range(folds)]


def _grid_rows(table: dict, searched: list[str]) -> list[list]:
    folds = sum(1 for k in table if k.startswith("split") and k.endswith("_test_score"))
    order = np.argsort(table["rank_test_score"], kind="stable")
    rows = []
    for i in order:
        rows.append([table["rank_test_score"][i]] + [table[f"param_{n}"][i] for n in searched]
                    + [f"{table['mean_test_score'][i]:.4f}", f"{table['std_test_score'][i]:.4f}", f"{table['mean_fit_time'][i]:.3f}"]
                    + [f"{table[f'split{k}_test_score'][i]:.3f}" for k in range(folds)])
    return rows


def runs_to_report(targets, runs_dir: Path) -> list[Run]:
    """The runs ``featcache report`` names (default: the newest), each checked with its feature set."""
    loaded = [load_run(t) for t in (targets or [latest(runs_dir)])]
    for run in loaded:
        check_features(run)
    return loaded


def render_run(run) -> tuple[Path, Path]:
    return write(run.path, "report", run_blocks(run), f"featcache run {run.name}")


# ---------------------------------------------------------------------------------------- compare
def compare_blocks(runs: list, out: Path) -> list[Block]:
    rows = []
    for r in sorted(runs, key=lambda r: -r.metrics.best_cv_mean):
        m, f = r.metrics, r.params.features
        link = os.path.relpath(r.path / "report.html", out)
        rows.append([Link(r.name, link), r.params.head, f"{f.model} {f.layer} pool={f.pool}", f.id[:8],
                     params_text(m.best_params), f"{m.best_cv_mean:.4f} +- {m.best_cv_std:.4f}",
                     f"{m.test.accuracy:.4f}", f"{m.fit_seconds:.2f}"])
    blocks: list[Block] = [("table", ["run", "head", "features", "set", "best params", "CV accuracy", "test accuracy", "fit s"], rows)]
    if len({r.params.features.manifest_sha256 for r in runs}) > 1:
        blocks.append(("p", "Note: these runs come from different data (manifests differ); their scores are not directly comparable."))
    image = plot_comparison(runs, out / "comparison.png")
    blocks.append(("img", image.name, "CV accuracy per run"))
    return blocks


def plot_comparison(runs: list, out: Path) -> Path:
    runs = sorted(runs, key=lambda r: -r.metrics.best_cv_mean)
    fig = figure((max(5, 1.1 * len(runs) + 2), 3.8))
    ax = fig.subplots()
    xs = range(len(runs))
    ax.errorbar(xs, [r.metrics.best_cv_mean for r in runs], yerr=[r.metrics.best_cv_std for r in runs],
                fmt="o", capsize=4, label="CV mean +- std")
    ax.scatter(xs, [r.test_accuracy for r in runs], marker="x", color="C3", label="test", zorder=3)
    ax.set_xticks(list(xs), [f"{r.params.head}\n{printable(r.params.features.model)}\n{printable(r.name[:15])}" for r in runs],
                  fontsize=7, parse_math=False)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


def render_comparison(runs: list, out: Path) -> tuple[Path, Path]:
    if len(runs) < 2:
        raise RunError("compare needs at least two runs")
    output_dir(out)
    return write(out, "comparison", compare_blocks(runs, out), f"featcache: {len(runs)} runs side by side")
