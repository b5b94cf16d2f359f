"""Run reports and side-by-side comparisons: Markdown and HTML from one list of blocks, PNG plots.

A report is built as blocks (heading, text, table, image); ``to_markdown`` and ``to_html`` render
the same blocks, so the two formats never disagree.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import numpy as np

from featcache.fitting import gallery as run_gallery
from featcache.core.errors import RunError
from featcache.core.files import output_dir
from featcache.core.text import Code, Inline, Link, Strong, printable, url

Block = tuple  # ("h", level, Inline) | ("p", Inline) | ("table", header, rows of Inline) | ("img", path, alt) | ("cards", [gallery.Card])
# Inline (featcache.text): plain text, escaped in both formats, or the Code/Strong/Link spans that only featcache makes.


# ---------------------------------------------------------------------------------------- render
def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + md_inline(block[2]))
        elif kind == "p":
            out.append(_MD_BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), md_inline(block[1]), count=1))
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(md_inline(c, cell=True) for c in header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out += ["| " + " | ".join(md_inline(c, cell=True) for c in row) + " |" for row in rows]
        elif kind == "img":
            out.append(f"![{md_inline(block[2])}]({url(block[1])})")
        elif kind == "cards":
            from featcache.report.gallery import cards_markdown

            out.append(cards_markdown(block[1], md_inline))
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{html_inline(block[1])}</p>")
        elif kind == "table":
            numeric = _numeric_columns(block[1], block[2])
            head = "".join(f"<th{' class=num' if numeric[k] else ''}>{html_inline(c)}</th>" for k, c in enumerate(block[1]))
            rows = "".join("<tr>" + "".join(f"<td{' class=num' if numeric[k] else ''}>{html_inline(c)}</td>"
                                            for k, c in enumerate(row)) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(url(block[1]))}" alt="{_html_text(plain(block[2]))}"></p>')
        elif kind == "cards":
            from featcache.report.gallery import cards_html

            body.append(cards_html(block[1], html_inline))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left}th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
             "img{max-width:100%}"
             "code{background:#f4f4f4;padding:0 3px}")
    if any(block[0] == "cards" for block in blocks):
        from featcache.report.gallery import CARD_STYLE

        style += CARD_STYLE
    # No script of any kind runs on a report page (a javascript: URL included), should text ever slip through as markup.
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"script-src 'none'; object-src 'none'\">"
            f"<title>{html_inline(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


_NUMBER = re.compile(r"[-+]?\d[\d.,]*(e[-+]?\d+)?%?(\s*(\+-|±)\s*\d[\d.]*)?( \(\d+ \w+\))?|nan|-")


def _numeric_columns(header: list, rows: list[list]) -> list[bool]:
    """Columns to right-align: every cell a number (or "-"), except the first column (row labels)."""
    return [k > 0 and bool(rows) and all(_NUMBER.fullmatch(plain(row[k]).strip()) for row in rows if k < len(row))
            for k in range(len(header))]


def plain(value: Inline) -> str:
    """The text of inline content without its markup."""
    if isinstance(value, list):
        return "".join(map(plain, value))
    if isinstance(value, Link):
        return value.label
    return value.text if isinstance(value, (Code, Strong)) else str(value)


def html_inline(value: Inline) -> str:
    if isinstance(value, list):
        return "".join(map(html_inline, value))
    if isinstance(value, Code):
        return f"<code>{_html_text(value.text)}</code>"
    if isinstance(value, Strong):
        return f"<strong>{_html_text(value.text)}</strong>"
    if isinstance(value, Link):
        return f'<a href="{html.escape(url(value.href))}">{_html_text(value.label)}</a>'
    return _html_text(value)


def _html_text(text) -> str:
    return html.escape(printable(str(text)))


def md_inline(value: Inline, cell: bool = False) -> str:
    """Markdown source for inline content; ``cell``: inside a table row, where ``|`` ends the cell."""
    if isinstance(value, list):
        return "".join(md_inline(v, cell) for v in value)
    if isinstance(value, Code):
        return _md_code(value.text, cell)
    if isinstance(value, Strong):
        return f"**{md_text(value.text)}**"
    if isinstance(value, Link):
        return f"[{md_text(value.label)}]({url(value.href)})"
    return md_text(value)


_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|~&_#]")  # "#": a heading's text ending in # would lose it
_MD_BLOCK_START = re.compile(r"^(\d{0,9})((?<=\d)[.)]|(?<!\d)[+-])")  # a paragraph starting so would be a heading or a list


def md_text(text) -> str:
    """Plain text as Markdown source that renders as exactly that text: control characters made visible
    (``printable``), then every character that could start markup backslash-escaped (CommonMark allows a
    backslash before any ASCII punctuation). A ``_`` between two letters or digits cannot emphasise and is
    left alone, so ``efficientnet_lite0`` stays readable in the .md file."""
    text = printable(str(text))

    def escape(m: re.Match) -> str:
        at, char = m.start(), m.group()
        if char == "_" and 0 < at < len(text) - 1 and text[at - 1].isalnum() and text[at + 1].isalnum():
            return char
        return "\\" + char

    return _MD_SPECIAL.sub(escape, text)


def _md_code(text: str, cell: bool) -> str:
    """A code span: backslashes are literal in it, so only backticks (a longer fence) and, in a table, pipes
    need care."""
    text = printable(str(text))
    if not text:
        return ""
    if cell:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    # A space inside each end: needed next to a backtick, and one a renderer strips from " x " (CommonMark 6.1)
    pad = " " if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def write(directory: Path, stem: str, blocks: list[Block], title: str) -> tuple[Path, Path]:
    md, page = directory / f"{stem}.md", directory / f"{stem}.html"
    md.write_text(f"# {md_text(title)}\n\n" + to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html([("h", 1, title)] + blocks, title), encoding="utf-8")
    return md, page


# ---------------------------------------------------------------------------------------- plots
def figure(figsize: tuple[float, float], dpi: int = 110):
    """A matplotlib Figure of its own (no pyplot): the caller's backend and open figures are untouched."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out)  # a PNG through the Agg canvas, whatever backend the process uses
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


# ---------------------------------------------------------------------------------------- blocks
def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "(defaults)"


def feature_line(f: dict) -> str:
    shape = "x".join(map(str, f.get("feature_shape") or []))
    return f"{f.get('model')} / {f.get('layer')} / pool={f.get('pool')} ({shape}, {f.get('dtype')}, weights {f.get('weights')})"


def run_blocks(run) -> list[Block]:
    p, m = run.params, run.metrics
    table, names = m.cv_results, p.class_names
    plots = run.path / "plots"
    plots.mkdir(exist_ok=True)
    f, split = p.features, p.split
    blocks: list[Block] = [
        ("p", ["Head ", Strong(p.head), " on feature set ", Code(f["id"]), f": {feature_line(f)}."]),
        ("p", [f"Split: {split['test']} (seed {p.seed}); {split['n_cv']} images in {p.cv}-fold "
               f"cross-validation, {split['n_test']} test images"
               + (f"; {split['dropped']} input files had no features (skipped at extraction)." if split.get('dropped') else "."),
               run_gallery.split_note(p)]),
        ("h", 2, "Result"),
        ("table", ["", "value"], [
            ["best parameters", _params_text(m.best_params)],
            ["fixed parameters", _params_text(p.fixed_params)],
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


def render_run(run) -> tuple[Path, Path]:
    return write(run.path, "report", run_blocks(run), f"featcache run {run.name}")


# ---------------------------------------------------------------------------------------- compare
def compare_blocks(runs: list, out: Path) -> list[Block]:
    rows = []
    for r in sorted(runs, key=lambda r: -r.metrics.best_cv_mean):
        m, f = r.metrics, r.params.features
        link = os.path.relpath(r.path / "report.html", out)
        rows.append([Link(r.name, link), r.params.head, f"{f['model']} {f['layer']} pool={f['pool']}", f["id"][:8],
                     _params_text(m.best_params), f"{m.best_cv_mean:.4f} +- {m.best_cv_std:.4f}",
                     f"{m.test.accuracy:.4f}", f"{m.fit_seconds:.2f}"])
    blocks: list[Block] = [("table", ["run", "head", "features", "set", "best params", "CV accuracy", "test accuracy", "fit s"], rows)]
    if len({r.params.features["manifest_sha256"] for r in runs}) > 1:
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
    ax.set_xticks(list(xs), [f"{r.params.head}\n{printable(r.params.features['model'])}\n{printable(r.name[:15])}" for r in runs],
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
