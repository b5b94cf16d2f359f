"""``sweep``: which backbone, layer and head suit *my* images, and at what cost?

A sweep is a grid of feature configurations (model@weights x layer x pool x views) times heads. Every
piece of it is checked before any work (unknown model, layer, head, parameter: one error listing
them all). Each configuration is extracted once (cache hits for the rest), each head is fitted on
each feature set into a run directory whose name depends only on the row, so a rerun reuses
every finished run and does only what is missing. All rows share the same test images and CV
folds because splits are assigned per input file (see ``splits``).

    <out>/sweep.json           the validated grid and, per row, its feature set and run
    <out>/leaderboard.{md,html,csv,png}   (featcache/sweeps/leaderboard.py)
    <out>/runs/<row>/          a normal run directory per row
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from classifiers import get_head
from classifiers.registry import UnknownName
from featcache import backbones
from featcache.config.extract import IDENTITY, ExtractConfig
from featcache.config.fit import DEFAULT_HEAD, SEED, SWEEP_CV, TEST_SIZE, check_split_options
from featcache.core import paths, progress
from featcache.core.errors import FeatcacheError, RunError
from featcache.core.files import output_dir, write_json
from featcache.extraction.extract import extract
from featcache.extraction.scan import scan
from featcache.fitting import pipeline
from featcache.fitting.params import check_grid, parse_params
from featcache.fitting.runs import CHECKSUMS, load_run
from featcache.store import fingerprint
from featcache.sweeps.leaderboard import SWEEP_FILE, render

# What a [[features]] entry of a sweep file may set: the settings that change the numbers.
FEATURE_KEYS = set(IDENTITY) | {"layers", "pools"}  # views too may be a list (one recipe or several)
FILE_KEYS = {"data", "cv", "test_size", "seed", "features", "heads"}
DEFAULTS = {"data": str(paths.DEFAULT_DATA_DIR), "cv": SWEEP_CV, "test_size": TEST_SIZE, "seed": SEED}


@dataclass
class SweepPlan:
    data: str
    features: list[ExtractConfig]  # one per feature set; data and cache_dir are the sweep's
    heads: dict[str, dict[str, list]]
    cv: int = SWEEP_CV
    test_size: float = TEST_SIZE
    seed: int = SEED
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
    for m, w in map(parse_model, models or [paths.DEFAULT_MODEL]):
        for layer in (layers or [None]):
            for pool in (pools or ["none"]):
                for recipe in (views or ["none"]):
                    try:
                        features.append(ExtractConfig(data=data, model=m, weights=w, layer=layer, pool=pool, image_size=image_size,
                                                      views=recipe))
                    except FeatcacheError as err:
                        problems.append(f"{m}@{w}: {err}")
    grids: dict[str, dict[str, list]] = {h: None for h in (heads or [DEFAULT_HEAD])}
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
    for entry in doc.get("features") or [{"model": paths.DEFAULT_MODEL}]:
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
                        problems.append(f"{settings.get('model', paths.DEFAULT_MODEL)}: {err}")
    heads = {name: (grid or None) for name, grid in (doc.get("heads") or {DEFAULT_HEAD: {}}).items()}
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
    problems: list[str] = list(plan.problems)
    try:
        scan(plan.data)
    except FeatcacheError as err:
        problems.append(str(err))
    specs = []
    for i, f in enumerate(plan.features):
        try:
            spec = backbones.for_config(f)
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
                    loaded = pipeline.load_features(result.id, cache_dir, say=False)
                pipeline.fit(head=head, params=grid, cv=plan.cv, test_size=plan.test_size, seed=plan.seed, run_dir=run_dir,
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
