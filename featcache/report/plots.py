"""PNG plots for the pages: matplotlib's ``Figure`` API (no pyplot state, no backend switch), user text
shown as text (``parse_math=False``: a class named ``$x$`` is not TeX)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from featcache.core.files import atomic_save
from featcache.core.text import printable


def figure(figsize: tuple[float, float], dpi: int = 110):
    """A matplotlib Figure of its own (no pyplot): the caller's backend and open figures are untouched."""
    from matplotlib.figure import Figure  # matplotlib: loaded when a plot is drawn

    return Figure(figsize=figsize, dpi=dpi)


def save(fig, out: Path) -> Path:
    fig.tight_layout()
    atomic_save(out, lambda f: fig.savefig(f, format="png"))  # through the Agg canvas, whatever backend the process uses
    return out


def is_log_scale(values) -> bool:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) and len(numbers) > 1 and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def plot_param(table: dict, name: str, out: Path, title: str) -> Path | None:
    """CV accuracy (mean +- std over folds) against one searched parameter; best over the others."""
    values = table[f"param_{name}"]
    distinct = list(dict.fromkeys(values))
    if len(distinct) < 2:
        return None
    mean, std = np.array(table["mean_test_score"]), np.array(table["std_test_score"])
    best = [int(np.argmax(np.where(np.array([v == d for v in values]), mean, -np.inf))) for d in distinct]
    fig = figure((5.5, 3.6))
    ax = fig.subplots()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    xs = distinct if numeric else list(range(len(distinct)))
    ax.errorbar(xs, mean[best], yerr=std[best], marker="o", capsize=4)
    if numeric and is_log_scale(distinct):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(d) for d in distinct])
    ax.set_xlabel(name)
    ax.set_ylabel("CV accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save(fig, out)


def plot_confusion(matrix: list[list[int]], names: list[str], out: Path) -> Path | None:
    if not matrix:
        return None
    m = np.array(matrix)
    size = max(3.5, 0.45 * len(names) + 2)
    fig = figure((size, size * 0.85))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    names = [printable(n) for n in names]  # parse_math=False: a class named $\foo$ is text, not TeX to fail on
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8, parse_math=False)
    ax.set_yticks(range(len(names)), names, fontsize=8, parse_math=False)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8, color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix", fontsize=10)
    return save(fig, out)


def plot_history(history: list[dict], out: Path) -> Path | None:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig = figure((9, 3.4))
    loss, acc = fig.subplots(1, 2)
    for key, axis in (("loss", loss), ("accuracy", acc)):
        axis.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        valid = [h.get(f"valid_{key}") for h in history]
        if any(v is not None for v in valid):
            axis.plot(epochs, [math.nan if v is None else v for v in valid], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle("MLP learning curves (refit on all CV images)", fontsize=10)
    return save(fig, out)
