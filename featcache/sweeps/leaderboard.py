"""A sweep's leaderboard: its rows ranked by CV accuracy, the best against the runner-up (a corrected
paired t-test over the folds, a bootstrap interval on the shared test images), and accuracy against
extraction cost. Rendered from ``sweep.json`` and the row runs alone, so ``featcache report`` can
redo it without the feature sets.

    <out>/leaderboard.{md,html,csv,png}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from scipy import stats

from featcache.core.files import read_csv, write_csv
from featcache.core.text import Link, Strong, printable
from featcache.fitting.runs import load_run
from featcache.report import render as report
from featcache.report.plots import figure, save
from featcache.report.render import params_text

SWEEP_FILE = "sweep.json"  # the validated grid and, per row, its feature set and run


def is_sweep(folder: str | Path) -> bool:
    """A sweep's folder (``featcache report`` re-renders its leaderboard), not a run's."""
    return (Path(folder) / SWEEP_FILE).is_file()


def paired_t_test(a: np.ndarray, b: np.ndarray, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio's corrected resampled t-test over per-fold scores: two-sided p-value."""
    d = np.asarray(a) - np.asarray(b)
    k = len(d)
    var = d.var(ddof=1)
    if var == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / math.sqrt((1 / k + n_test / n_train) * var)
    return float(2 * stats.t.sf(abs(t), df=k - 1))


def bootstrap_interval(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% interval of the test-accuracy difference, resampling the (shared) test images."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct_a), size=(n, len(correct_a)))
    diffs = correct_a[idx].mean(1) - correct_b[idx].mean(1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def _test_correct(run_dir: Path) -> dict[str, bool]:
    header, *rows = read_csv(run_dir / "test_predictions.csv")
    return {r["path"]: r["true"] == r["predicted"] for r in (dict(zip(header, row)) for row in rows)}


def render(out) -> list[Path]:
    """(Re)write leaderboard.{md,html,csv,png} from sweep.json and the row runs."""
    out = Path(out)
    state = json.loads((out / SWEEP_FILE).read_text())
    rows = []
    for row_id, row in state["rows"].items():
        run = load_run(out / row["run"], verify=False)
        m, f, split = run.metrics, run.params.features, run.params.split
        rows.append({
            "row": row_id, "run": run, "model": f.model, "weights": f.weights_kind,
            "layer": f.layer, "pool": f.pool, "views": f.views, "head": run.params.head, "cv_mean": m.best_cv_mean,
            "cv_std": m.best_cv_std, "test": m.test.accuracy, "best_params": m.best_params,
            "images_per_second": f.images_per_second or float("nan"), "fit_seconds": m.fit_seconds,
            "feature_mb": row["feature_bytes"] / 2**20, "folds": m.fold_scores(), "dropped": split.get("dropped", 0),
            "n_cv": split["n_cv"], "n_test": split["n_test"],
        })
    rows.sort(key=lambda r: (-r["cv_mean"], -r["test"]))
    blocks = _leaderboard_blocks(rows, out)
    md, page = report.write(out, "leaderboard", blocks, f"featcache sweep: {len(rows)} rows")
    csv_path = out / "leaderboard.csv"
    write_csv(csv_path, ["rank", "model", "weights", "layer", "pool", "views", "head", "cv_mean", "cv_std", "test_accuracy", "best_params",
                         "extract_images_per_second", "fit_seconds", "feature_mb", "run"],
              ([k, r["model"], r["weights"], r["layer"], r["pool"], r["views"], r["head"], f"{r['cv_mean']:.6f}", f"{r['cv_std']:.6f}",
                f"{r['test']:.6f}", json.dumps(r["best_params"]), f"{r['images_per_second']:.2f}", f"{r['fit_seconds']:.3f}",
                f"{r['feature_mb']:.2f}", os.path.relpath(r["run"].path, out)] for k, r in enumerate(rows, 1)))
    plot = _plot_cost(rows, out / "leaderboard.png")
    return [md, page, csv_path, plot]


def _leaderboard_blocks(rows: list[dict], out: Path) -> list:
    table = []
    for k, r in enumerate(rows, 1):
        mark = Strong("best") if k == 1 else str(k)
        link = os.path.relpath(r["run"].path / "report.html", out)
        note = f" ({r['dropped']} dropped)" if r["dropped"] else ""
        table.append([mark, r["model"], r["weights"], r["layer"], r["pool"], r["views"], r["head"],
                      f"{r['cv_mean']:.4f} +- {r['cv_std']:.4f}", f"{r['test']:.4f}", params_text(r["best_params"]),
                      f"{r['images_per_second']:.1f}", f"{r['fit_seconds']:.2f}", f"{r['feature_mb']:.1f}", [Link("run", link), note]])
    blocks = [("p", f"{len(rows)} rows, sorted by cross-validated accuracy. Every row uses the same "
                    f"{rows[0]['n_test'] if rows else 0} test images and the same CV folds (assigned per file)."),
              ("table", ["rank", "model", "weights", "layer", "pool", "views", "head", "CV accuracy", "test accuracy", "best params",
                         "extract img/s", "fit s", "features MB", "run"], table)]
    if len(rows) >= 2:
        a, b = rows[0], rows[1]
        p = paired_t_test(np.array(a["folds"]), np.array(b["folds"]), a["n_cv"] * (len(a["folds"]) - 1) // len(a["folds"]),
                          a["n_cv"] // len(a["folds"]))
        ca, cb = _test_correct(a["run"].path), _test_correct(b["run"].path)
        shared = sorted(set(ca) & set(cb))
        lo, hi = bootstrap_interval(np.array([ca[s] for s in shared], float), np.array([cb[s] for s in shared], float))
        verdict = "a lead larger than chance" if p < 0.05 and lo > 0 else "a lead within chance (not significant)"
        runner_up = f"{b['model']} {b['layer']}{'' if b['views'] == 'none' else ' views ' + b['views']} {b['head']}"
        blocks.append(("p", f"Best vs runner-up ({runner_up}): CV difference "
                            f"{a['cv_mean'] - b['cv_mean']:+.4f}, corrected paired t-test over the {len(a['folds'])} folds p = {p:.3f}; "
                            f"test difference {a['test'] - b['test']:+.4f}, 95% bootstrap interval [{lo:+.4f}, {hi:+.4f}] "
                            f"on {len(shared)} shared test images: {verdict}."))
    if any(r["dropped"] for r in rows):
        blocks.append(("p", "Rows marked 'dropped' had input files that their backbone could not use (skipped at extraction); "
                            "those images are missing from that row's folds and test set."))
    blocks.append(("img", "leaderboard.png", "accuracy against extraction cost"))
    return blocks


def _plot_cost(rows: list[dict], path: Path) -> Path:
    fig = figure((7, 4.2))
    ax = fig.subplots()
    heads = sorted({r["head"] for r in rows})
    for k, head in enumerate(heads):
        mine = [r for r in rows if r["head"] == head]
        cost = [1000.0 / r["images_per_second"] if r["images_per_second"] and r["images_per_second"] > 0 else np.nan for r in mine]
        ax.errorbar(cost, [r["cv_mean"] for r in mine], yerr=[r["cv_std"] for r in mine], fmt="o", capsize=3, label=head, color=f"C{k}")
        for x, r in zip(cost, mine):
            views = "" if r["views"] == "none" else f" {r['views'].split(':seed')[0]}"
            ax.annotate(printable(f"{r['model']}{'' if r['weights'] == 'pretrained' else ' (' + r['weights'] + ')'}")
                        + f"\n{printable(r['layer'])} {r['pool']}{views}",
                        (x, r["cv_mean"]), fontsize=6, xytext=(4, 2), textcoords="offset points", parse_math=False)
    ax.set_xlabel("extraction cost (ms per image, this machine)")
    ax.set_ylabel("CV accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
