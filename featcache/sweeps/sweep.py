"""``sweep``: which backbone, layer and head suit *my* images, and at what cost?

A sweep is a grid of feature configurations (model@weights x layer x pool x views) times heads. Every
piece of it is checked before any work (unknown model, layer, head, parameter: one error listing
them all). Each configuration is extracted once (cache hits for the rest), each head is fitted on
each feature set into a run directory whose name depends only on the row, so a rerun reuses
every finished run and does only what is missing. All rows share the same test images and CV
folds because splits are assigned per input file (see ``splits``).

    <out>/sweep.json           the validated grid and, per row, its feature set and run
    <out>/leaderboard.{md,html,csv,png}
    <out>/runs/<row>/          a normal run directory per row
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifiers import get_head
from classifiers.registry import UnknownName

from featcache.core import paths as config, progress
from featcache.store import fingerprint
from featcache.core.errors import FeatcacheError
from featcache.config.extract import ExtractConfig
from featcache.core.files import output_dir, read_csv, write_csv, write_json
from featcache.fitting.params import check_grid, parse_params
from featcache.fitting.splits import check_split_options
from featcache.core.text import Link, Strong, printable

SWEEP_FILE = "sweep.json"


# What a [[features]] entry of a sweep file may set: the settings that change the numbers.
FEATURE_KEYS = {"model", "weights", "layer", "layers", "pool", "pools", "image_size", "dtype", "precision", "draft", "views"}
FILE_KEYS = {"data", "cv", "test_size", "seed", "features", "heads"}
DEFAULTS = {"data": str(config.DEFAULT_DATA_DIR), "cv": 5, "test_size": 0.2, "seed": 0}


@dataclass
class SweepPlan:
    data: str
    features: list[ExtractConfig]  # one per feature set; data and cache_dir are the sweep's
    heads: dict[str, dict[str, list]]
    cv: int = 5
    test_size: float = 0.2
    seed: int = 0
    layers_resolved: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # found while parsing; reported with the rest

    def key(self) -> dict:
        return {"data": str(Path(self.data).resolve()), "features": [f.identity() for f in self.features],
                "heads": self.heads, "cv": self.cv, "test_size": self.test_size, "seed": self.seed}


def parse_model(text: str) -> tuple[str, str]:
    model, _, weights = text.partition("@")
    return model, weights or "DEFAULT"


def plan_from_options(data=None, models=None, layers=None, pools=None, heads=None, params=None, image_size=None, cv=None,
                      test_size=None, seed=None, views=None) -> SweepPlan:
    """CLI-style options: every model x every layer x every pool x every views recipe; ``params`` as
    HEAD.NAME=v1,v2."""
    data = str(data if data is not None else DEFAULTS["data"])
    problems: list[str] = []
    features = []
    for m, w in map(parse_model, models or [config.DEFAULT_MODEL]):
        for layer in (layers or [None]):
            for pool in (pools or ["none"]):
                for recipe in (views or ["none"]):
                    try:
                        features.append(ExtractConfig(data=data, model=m, weights=w, layer=layer, pool=pool, image_size=image_size,
                                                      views=recipe))
                    except FeatcacheError as err:
                        problems.append(f"{m}@{w}: {err}")
    grids: dict[str, dict[str, list]] = {h: None for h in (heads or ["svm"])}
    for item in params or []:
        head, dot, rest = item.partition(".")
        if not dot or head not in grids:
            problems.append(f"--param {item!r} must be HEAD.NAME=v1,v2 for a --head of this sweep ({', '.join(grids)})")
            continue
        parsed = _parse(head, [rest], problems)
        problems += [f"--param {head}.{name} is given twice: give it once, e.g. --param {head}.{name}=v1,v2"
                     for name in parsed if name in (grids[head] or {})]
        grids[head] = {**(grids[head] or {}), **parsed}
    return SweepPlan(data, features, grids, cv if cv is not None else DEFAULTS["cv"],
                     test_size if test_size is not None else DEFAULTS["test_size"], seed if seed is not None else DEFAULTS["seed"],
                     problems=problems)


def plan_from_toml(path, data=None, cv=None, test_size=None, seed=None, image_size=None) -> SweepPlan:
    """A sweep file::

        data = "data"          # optional
        cv = 5
        [[features]]
        model = "efficientnet_lite0"
        layers = ["forward_features", "blocks.5"]
        pools = ["avg", "none"]
        [[features]]
        model = "efficientnet_lite0"
        weights = "none"
        [heads.svm]
        C = [0.1, 1, 10]
        [heads.logreg]

    Precedence: an argument given here (the CLI's --data, --cv, --test-size, --seed, --image-size)
    overrides the file, the file overrides the defaults. A relative ``data`` in the file is relative
    to the file's folder.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise FeatcacheError(f"cannot read sweep file {path}: {err}") from None
    unknown = set(doc) - FILE_KEYS
    if unknown:
        raise FeatcacheError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(FILE_KEYS))}")
    if data is None and "data" in doc:
        data = path.parent / str(doc["data"])
    data = str(data if data is not None else DEFAULTS["data"])
    problems: list[str] = []
    features = []
    for entry in doc.get("features") or [{"model": config.DEFAULT_MODEL}]:
        extra = set(entry) - FEATURE_KEYS
        if extra:
            problems.append(f"sweep file {path}: unknown [[features]] key(s) {', '.join(sorted(extra))}: use {', '.join(sorted(FEATURE_KEYS))}")
            continue
        settings = {k: v for k, v in entry.items() if k not in ("layer", "layers", "pool", "pools", "views")}
        settings["weights"] = str(settings.get("weights", "DEFAULT"))
        if image_size is not None:
            settings["image_size"] = image_size
        recipes = entry.get("views", "none")  # one recipe or a list of them
        for layer in entry.get("layers", [entry.get("layer")]):
            for pool in entry.get("pools", [entry.get("pool", "none")]):
                for recipe in (recipes if isinstance(recipes, list) else [recipes]):
                    try:
                        features.append(ExtractConfig(data=data, layer=layer, pool=pool, views=recipe, **settings))
                    except FeatcacheError as err:
                        problems.append(f"{settings.get('model', config.DEFAULT_MODEL)}: {err}")
    heads = {name: (grid or None) for name, grid in (doc.get("heads") or {"svm": {}}).items()}
    pick = lambda name, given: given if given is not None else doc.get(name, DEFAULTS[name])  # noqa: E731
    return SweepPlan(data, features, heads, int(pick("cv", cv)), float(pick("test_size", test_size)), int(pick("seed", seed)),
                     problems=problems)


def _parse(head: str, items: list[str], problems: list[str]) -> dict:
    try:
        return parse_params(get_head(head), items)
    except (UnknownName, ValueError) as err:
        problems.append(str(err))
        return {}


def _problems(problems: list[str]) -> str:
    return f"invalid sweep ({len(problems)} problem{'s' * (len(problems) > 1)}): " + "; ".join(problems)


def validate(plan: SweepPlan) -> list:
    """Resolve every feature configuration and head grid; one error naming every problem."""
    from featcache.store.manifest import scan

    problems: list[str] = list(plan.problems)
    try:
        scan(plan.data)
    except FeatcacheError as err:
        problems.append(str(err))
    specs = []
    for i, f in enumerate(plan.features):
        try:
            spec = f.resolve_spec()
            specs.append(spec)
            plan.layers_resolved[i] = spec.layer
        except FeatcacheError as err:
            problems.append(f"{f.label}: {err}")
            specs.append(None)
    for head, grid in plan.heads.items():
        try:
            cls = get_head(head)
        except UnknownName as err:
            if str(err) not in problems:
                problems.append(str(err))
            continue
        try:
            check_grid(cls, grid if grid is not None else cls.default_grid)
        except ValueError as err:
            problems.append(str(err))
        if head == "gap":
            problems += [f"{f.label}: the gap head needs spatial maps; use pool none for it, or drop gap"
                         for f, s in zip(plan.features, specs) if s is not None and len(s.feature_shape) != 3]
    try:
        check_split_options(plan.cv, plan.test_size)
    except FeatcacheError as err:
        problems.append(str(err))
    if problems:
        raise FeatcacheError(_problems(problems))
    return specs


def default_out(plan: SweepPlan) -> Path:
    return Path("sweeps") / f"sweep-{fingerprint.digest(plan.key())[:10]}"


def sweep(data=None, models=None, layers=None, pools=None, heads=None, params=None,
          config_file=None, image_size=None, cv: int | None = None, test_size: float | None = None, seed: int | None = None,
          out=None, cache_dir=None, progress_bar: bool = True, plan: SweepPlan | None = None, views=None) -> Path:
    """Run (or resume) a sweep; returns its directory with the leaderboard.

    ``None`` means "not given": the sweep file's value, else the default (data ``./data``, cv 5,
    test_size 0.2, seed 0). Given values override the file.
    """
    from featcache.extraction.extract import extract
    from featcache.fitting.pipeline import fit, load_features

    if plan is None:
        if config_file and (models or layers or pools or views or heads or params):
            raise FeatcacheError("give either a sweep file or models/layers/pools/views/heads/params, not both")
        plan = (plan_from_toml(config_file, data, cv, test_size, seed, image_size) if config_file
                else plan_from_options(data, models, layers, pools, heads, params, image_size, cv, test_size, seed, views))
    validate(plan)
    if not out:
        out = default_out(plan)
        output_dir(out.parent)  # ./sweeps: every default sweep folder's parent
    out = output_dir(out)
    state_path = out / SWEEP_FILE
    state = {"plan": plan.key(), "rows": {}}
    if state_path.is_file():
        previous = json.loads(state_path.read_text())
        if previous.get("plan") != plan.key():
            raise FeatcacheError(f"{out} holds a different sweep: choose another --out, or delete it")
        state = previous
    n_rows = len(plan.features) * len(plan.heads)
    overall = progress.bar(n_rows, "sweep", progress_bar, unit="row", position=0)
    for i, f in enumerate(plan.features):
        result = extract(f, cache_dir=cache_dir, progress_bar=progress_bar)
        loaded = None
        for head, grid in plan.heads.items():
            row_id = f"{result.id[:10]}-{head}"
            run_dir = out / "runs" / row_id
            if not _finished(run_dir, result.id, head, grid, plan):
                if loaded is None:
                    loaded = load_features(result.id, cache_dir, say=False)
                fit(head=head, params=grid, cv=plan.cv, test_size=plan.test_size, seed=plan.seed, run_dir=run_dir,
                    progress_bar=False, loaded=loaded)
                reused = False
            else:
                reused = True
            row = {"feature_set": result.id, "head": head, "run": str(run_dir.relative_to(out)), "config": f.identity(),
                   "reused": reused}
            row["feature_bytes"] = result.path.stat().st_size
            state["rows"][row_id] = row
            write_json(state_path, state)
            overall.update()
    overall.close()
    render(out)
    return out


def _finished(run_dir: Path, fsid: str, head: str, grid, plan: SweepPlan) -> bool:
    """A complete, intact run of exactly this row (killed sweeps leave none or a finished one)."""
    from featcache.core.errors import RunError
    from featcache.fitting.runs import CHECKSUMS, load_run

    if not (run_dir / CHECKSUMS).is_file():
        return False
    try:
        run = load_run(run_dir)
    except RunError:
        return False
    p = run.params
    wanted = grid if grid is not None else get_head(head).default_grid
    return (p.feature_id == fsid and p.head == head and p.grid == json.loads(json.dumps(wanted))
            and p.cv == plan.cv and p.seed == plan.seed and p.split.get("test_size") in (plan.test_size, None))


# ---------------------------------------------------------------------------------------- leaderboard
def paired_t_test(a: np.ndarray, b: np.ndarray, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio's corrected resampled t-test over per-fold scores: two-sided p-value."""
    from scipy import stats

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
    from featcache.report import render as report
    from featcache.fitting.runs import load_run

    out = Path(out)
    state = json.loads((out / SWEEP_FILE).read_text())
    rows = []
    for row_id, row in state["rows"].items():
        run = load_run(out / row["run"], verify=False)
        m, f, split = run.metrics, run.params.features, run.params.split
        rows.append({
            "row": row_id, "run": run, "model": f["model"], "weights": f["weights_kind"] if f["weights_kind"] != "pretrained" else "pretrained",
            "layer": f["layer"], "pool": f["pool"], "views": f.get("views", "none"), "head": run.params.head, "cv_mean": m.best_cv_mean,
            "cv_std": m.best_cv_std, "test": m.test.accuracy, "best_params": m.best_params,
            "images_per_second": f.get("images_per_second") or float("nan"), "fit_seconds": m.fit_seconds,
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
    from featcache.report.render import _params_text

    table = []
    for k, r in enumerate(rows, 1):
        mark = Strong("best") if k == 1 else str(k)
        link = os.path.relpath(r["run"].path / "report.html", out)
        note = f" ({r['dropped']} dropped)" if r["dropped"] else ""
        table.append([mark, r["model"], r["weights"], r["layer"], r["pool"], r["views"], r["head"],
                      f"{r['cv_mean']:.4f} +- {r['cv_std']:.4f}", f"{r['test']:.4f}", _params_text(r["best_params"]),
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
    from featcache.report.render import figure, save

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
