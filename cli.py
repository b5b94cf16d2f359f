"""The ``featcache`` command: parse the options into the library's records, call it, format what it returns.

Options take their names, defaults and choices from the records (``ExtractConfig``, ``FitConfig``,
``config.choices``); tests/test_architecture.py checks they agree. Each command imports the library
module it calls inside its function (torch, h5py and scikit-learn load there), so ``featcache --help``
is instant; everything imported at the top is standard library only. Every ``FeatcacheError`` becomes
a one-line ``click.ClickException``; anything unexpected is reported in one line too, with ``--debug``
(or FEATCACHE_DEBUG=1) to see the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path

# Before torch loads: OpenMP threads that sleep instead of spinning. With a core busy elsewhere,
# spinning made 2-thread inference ~10x slower (bench/RESULTS.md); on a quiet machine it is a wash.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

import classifiers  # noqa: E402  (its names load scikit-learn on first use)  (the registry; heads' libraries load on use)
import featcache  # noqa: E402  (its entry points load torch, h5py and scikit-learn on first use)
from classifiers.registry import UnknownName  # noqa: E402
from featcache.config import fit as fit_defaults  # noqa: E402
from featcache.config.choices import AT_TEST, BACKENDS, DECODERS, DTYPES, ON_ERROR, POOLS, PRECISIONS  # noqa: E402
from featcache.config.extract import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, ExtractConfig, count_or_auto  # noqa: E402
from featcache.config.fit import FitConfig  # noqa: E402
from featcache.core import paths  # noqa: E402
from featcache.core.errors import FeatcacheError  # noqa: E402
from featcache.core.text import printable, terminal  # noqa: E402

X, F = ExtractConfig, FitConfig  # the records whose fields are the options' defaults
HEADS = "svm, ridge, logreg, gap, mlp"  # classifiers.list_heads() without loading scikit-learn (a test checks they agree)

CACHE_DIR = click.option(
    "--cache-dir", envvar="FEATCACHE_CACHE_DIR", type=click.Path(file_okay=False), default=None,
    help="Feature-set cache directory [default: ./.featcache, or $FEATCACHE_CACHE_DIR].",
)
RUNS_DIR = click.option(
    "--runs-dir", envvar="FEATCACHE_RUNS_DIR", type=click.Path(file_okay=False), default=None,
    help="Where fits write runs [default: ./runs, or $FEATCACHE_RUNS_DIR].",
)
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bars or status lines.")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")


class CountOrAuto(click.ParamType):
    """A whole number >= ``minimum`` or ``auto``, checked by the extraction record's own rule."""

    name = "N|auto"

    def __init__(self, minimum: int):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        flag = param.opts[0] if param else "value"
        try:
            return count_or_auto(value, flag, self.minimum)
        except FeatcacheError as err:
            self.fail(str(err).removeprefix(f"{flag} "), param, ctx)


def echo(message="", err: bool = False) -> None:
    """Everything the commands print goes through here: names in it (files, classes, labels) may hold
    escape sequences, which are shown escaped, never sent to the terminal (featcache.text)."""
    click.echo(terminal(str(message)), err=err)


class Featcache(click.Group):
    """Turns library errors into one-line messages and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug") or os.environ.get("FEATCACHE_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except click.ClickException as err:  # click's own messages quote what was typed: a name, a path
            err.message = printable(err.message)  # an error is one line: a line break in a name shows as \n
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            echo("featcache: interrupted; run the same command again to resume", err=True)
            sys.exit(130)
        except BrokenPipeError:  # e.g. `featcache runs | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except Exception as err:
            if debug:
                raise
            if isinstance(err, (FeatcacheError, UnknownName, classifiers.ParamError)):
                raise click.ClickException(printable(str(err))) from None
            text = printable(str(err).splitlines()[0]) if str(err) else ""
            raise click.ClickException(f"internal error: {type(err).__name__}: {text} (rerun with --debug for the traceback)") from None


@click.group(cls=Featcache, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="featcache")
def main(debug: bool) -> None:
    """Extract frozen-backbone image features once; fit and compare classifier heads in seconds."""


# ------------------------------------------------------------------------------------------------
@main.command(short_help="Images -> a cached feature set.")
@click.option("--data", default=X.data, show_default=True, type=click.Path(), help="Image folder: one subfolder per class, optionally under train/ val/ test/ (or their aliases); or images only (unlabelled).")
@click.option("--labels", default=X.labels, type=click.Path(dir_okay=False), metavar="FILE.csv", help="Labels from a CSV with columns path,label[,split] (paths relative to --data) instead of class folders.")
@click.option("--model", "-m", default=X.model, show_default=True, help="Backbone: a torchvision name, timm:NAME, openclip:ARCH/TAG, or efficientnet_lite0/1/2 (built in, offline); `featcache models` lists them.")
@click.option("--weights", default=X.weights, show_default=True, help="DEFAULT (pretrained), a weights tag, none (random init) or a state-dict file.")
@click.option("--layer", default=X.layer, help="Graph node to cut at [default: a map model's last map before pooling, a token model's own embedding].")
@click.option("--pool", type=click.Choice(POOLS), default=X.pool, show_default=True,
              help="Reduce the cut's output: avg/max over a map's positions or all tokens; for token sequences cls "
                   "(the class token) or avg_patch (the mean of the patch tokens, class and register tokens left out).")
@click.option("--image-size", type=int, default=X.image_size, help=f"Crop size fed to the model, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px [default: the weights' own].")
@click.option("--dtype", type=click.Choice(DTYPES), default=X.dtype, show_default=True, help="Storage precision of the features.")
@click.option("--batch-size", type=CountOrAuto(1), default=X.batch_size, show_default=True, help="Images per forward pass, or auto (measured per model).")
@click.option("--workers", type=CountOrAuto(0), default=X.workers, show_default=True, help="Decoding worker processes, or auto.")
@click.option("--streams", type=CountOrAuto(1), default=X.streams, show_default=True, help="Batches in flight on CPU, each on cores/N threads, or auto (2 on a multi-core CPU).")
@click.option("--device", default=X.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=X.precision, show_default=True, help="auto = fp16 autocast on CUDA, fp32 on CPU.")
@click.option("--on-error", type=click.Choice(ON_ERROR), default=X.on_error, show_default=True, help="What to do with an image that cannot be decoded.")
@click.option("--shard", default=X.shard, metavar="I/N", help="Extract only slice I of N (I from 0); join with `featcache cache merge`.")
@click.option("--engine", type=click.Choice(BACKENDS), default=X.engine, show_default=True, help="Run on this machine or on a Ray cluster.")
@click.option("--ray-address", default=X.ray_address, help="Ray cluster address (with --engine ray) [default: start a local Ray].")
@click.option("--draft/--no-draft", default=X.draft, show_default=True, help="Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (the CPU decoder); --no-draft decodes at full size.")
@click.option("--decode", type=click.Choice(DECODERS), default=X.decode, show_default=True,
              help="cpu: Pillow in the worker processes. gpu: JPEGs decoded in batches on --device by torchvision "
                   "(nvjpeg), resized and cropped there; meant for CUDA (runs on a CPU too, slower); other files "
                   "are decoded on the CPU. A different feature set.")
@click.option("--views", default=X.views, show_default=True, metavar="SPEC",
              help="Augmented views per image, each a row: none, flip (+ mirror), crops:5|10 (centre + corners "
                   "[+ mirrors]), rrc:N[:seed=S][:scale=LO] (plain + N-1 random resized crops with flips). One decode, "
                   "one forward pass per view; a different feature set.")
@click.option("--compile", is_flag=True, default=X.compile, help="torch.compile the backbone: faster for large jobs after a 10-30 s compile.")
@click.option("--lock-timeout", type=float, default=X.lock_timeout, show_default=True, help="Seconds to wait for another process extracting the same set (-1 = forever, 0 = fail at once).")
@click.option("--incremental/--no-incremental", default=X.incremental, show_default=True, help="Reuse the rows of unchanged files from an older feature set of the same extractor and folder.")
@CACHE_DIR
@QUIET
@JSON
def extract(quiet, as_json, **settings):
    """Extract features of every image under --data into a cached feature set."""

    cfg = ExtractConfig(**settings)
    result = featcache.extract(cfg, progress_bar=not quiet)
    if not quiet:
        for line in result.notes(cfg):
            echo(line, err=True)
    echo(json.dumps(result.to_dict()) if as_json else result.summary())


# ------------------------------------------------------------------------------------------------
@main.command(short_help="List backbones, default cuts, shapes.")
@click.argument("pattern", required=False)
@click.option("--layers", "layers_of", metavar="MODEL", default=None, help="List the graph nodes --layer accepts for MODEL.")
@QUIET
@JSON
def models(pattern, layers_of, quiet, as_json):
    """List backbones (glob PATTERN, e.g. 'resnet*' or 'timm:convnext*') with default cut and shape."""
    if layers_of:
        from featcache.backbones import layers

        names = layers(layers_of)
        echo(json.dumps(names) if as_json else "\n".join(names))
        return
    from featcache.backbones.listing import list_models

    rows = list_models(pattern, progress_bar=not quiet)
    if not rows and not as_json:
        raise click.ClickException(f"no model matches {pattern!r}: try `featcache models` for all, or a glob such as 'resnet*' or 'timm:vit*'")
    if as_json:
        echo(json.dumps([{"name": r.name, "family": r.family, "default_layer": r.default_layer,
                          "feature_shape": list(r.feature_shape), "weights": r.weights, "described": r.described} for r in rows]))
        return
    table = [("MODEL", "FAMILY", "DEFAULT LAYER", "FEATURES", "PRETRAINED WEIGHTS")]
    table += [(r.name, r.family, r.default_layer, "x".join(map(str, r.feature_shape)) or "?", r.weights) for r in rows]
    echo(_table(table))
    pending = sum(not r.described for r in rows)
    if pending and not quiet:
        echo(f"{pending} of {len(rows)} not described (each takes up to a second, and what is described is kept): "
             "run the command again to describe more, or narrow the pattern", err=True)


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ------------------------------------------------------------------------------------------------
@main.group(short_help="List, inspect, verify, remove, merge feature sets.")
def cache():
    """Manage cached feature sets: list, info, verify, rm, merge."""


@cache.command("list")
@CACHE_DIR
@JSON
def cache_list(cache_dir, as_json):
    """Feature sets in the cache, newest first."""
    from featcache.store import cache as c

    entries = sorted(c.entries(cache_dir), key=lambda e: e.created, reverse=True)
    records = [e.to_record() for e in entries]  # the JSON and the table show the same facts
    _listing(records, as_json, f"no feature sets in {_cache_path(cache_dir)}",
             ("ID", "STATE", "MODEL", "LAYER", "POOL", "ROWS", "SHAPE", "SIZE", "CREATED"),
             lambda r: (r["id"], r["state"], r["model"] or "-", r["layer"] or "-", r["pool"] or "-",
                        "-" if r["rows"] is None else r["rows"], "x".join(map(str, r["feature_shape"] or [])) or "-",
                        _size(r["size_bytes"]), r["created"] or "-"))


def _listing(records: list[dict], as_json: bool, empty: str, header: tuple, row) -> None:
    """Records as JSON, or as a table of ``row(record)`` under ``header``, or a line saying there are none."""
    if as_json:
        echo(json.dumps(records))
    elif not records:
        echo(empty)
    else:
        echo(_table([header] + [row(r) for r in records]))


@cache.command("info")
@click.argument("ref")
@CACHE_DIR
@JSON
def cache_info(ref, cache_dir, as_json):
    """Everything recorded about one feature set (id, id prefix or path)."""
    from featcache.store.cache import open_features

    with open_features(ref, cache_dir, verify=False) as fs:  # shows what is recorded, damaged or not
        meta = {**fs.meta, "path": str(fs.path), "class_names": fs.class_names, "skipped": len(fs.skipped)}
    if as_json:
        echo(json.dumps(meta, indent=2, default=str))
        return
    for key in sorted(meta):
        value = meta[key]
        echo(f"{key:18} {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@cache.command("verify")
@click.argument("ref", required=False)
@CACHE_DIR
def cache_verify(ref, cache_dir):
    """Read every chunk and check the content hash; non-zero exit if anything is damaged."""
    from featcache.store import cache as c

    results = c.check(ref, cache_dir)
    bad = 0
    for path, problems in results.items():
        if problems:
            bad += 1
            echo(f"DAMAGED  {path}: {'; '.join(problems)}")
        else:
            echo(f"ok       {path}")
    if not results:
        echo(f"no feature sets in {_cache_path(cache_dir)}")
    if bad:
        raise click.ClickException(f"{bad} damaged feature set(s): remove with `featcache cache rm ID` and extract again")


@cache.command("rm")
@click.argument("refs", nargs=-1, required=True)
@CACHE_DIR
def cache_rm(refs, cache_dir):
    """Delete feature sets (complete, partial or shards) by id or id prefix."""
    from featcache.store import cache as c

    for ref in refs:
        for path in c.remove(ref, cache_dir):
            echo(f"removed {path}")


@cache.command("merge")
@click.argument("ref")
@CACHE_DIR
@QUIET
def cache_merge(ref, cache_dir, quiet):
    """Assemble the shards of a --shard I/N extraction into one feature set."""
    from featcache.extraction.shards import merge

    echo(merge(ref, cache_dir, progress_bar=not quiet).summary())


# ------------------------------------------------------------------------------------------------
@main.command(short_help="Grid-search a head on cached features.")
@click.option("--head", default=F.head, show_default=True, help=f"Classifier head: {HEADS} (see `featcache heads`).")
@click.option("--features", default=F.features, metavar="ID|PATH", help="Feature set [default: the most recent complete one].")
@click.option("--param", "params", multiple=True, metavar="NAME=v1,v2", help="Search these values (repeatable; several names form a full grid).")
@click.option("--set", "fixed", multiple=True, metavar="NAME=VALUE", help="Fix a head parameter (one value; takes it out of the default grid).")
@click.option("--cv", type=int, default=F.cv,
              help=f"Cross-validation folds [default: {fit_defaults.HEAD_CV['svm']} for svm, {fit_defaults.OTHER_CV} otherwise].")
@click.option("--test-size", type=float, default=F.test_size, show_default=True, help="Stratified hold-out fraction when there is no test/ split.")
@click.option("--seed", type=int, default=F.seed, show_default=True, help="Seed of the hold-out, the folds and the heads.")
@click.option("--n-jobs", type=int, default=F.n_jobs, show_default=True, help="Parallel fits (-1: all cores).")
@click.option("--backend", type=click.Choice(BACKENDS), default=F.backend, show_default=True, help="Run the fits here or on Ray.")
@click.option("--allow-stale", is_flag=True, default=F.allow_stale, help="Fit even if the image folder changed since extraction.")
@click.option("--exclude", default=F.exclude, type=click.Path(dir_okay=False), metavar="FILE",
              help="Leave these files out of training and test: one path per line, or a CSV with a path column (e.g. a filtered audit.csv).")
@click.option("--views-at-test", type=click.Choice(AT_TEST), default=F.views_at_test, show_default=True,
              help="Feature sets with views: score each CV/test image by the head's output averaged over its views, "
                   "or by its first view (the plain crop) only. The run reports both.")
@CACHE_DIR
@RUNS_DIR
@QUIET
@JSON
def fit(params, fixed, quiet, as_json, **settings):
    """Grid-search a head on cached features, refit, score the test split, save a run with a report."""
    from featcache.fitting.params import parse_fixed, parse_params

    head_cls = classifiers.get_head(settings["head"])
    cfg = FitConfig(params=parse_params(head_cls, params) if params else None,
                    head_params=parse_fixed(head_cls, fixed) if fixed else None, **settings)
    run = featcache.fit(cfg, progress_bar=not quiet)
    if as_json:
        echo(json.dumps(run.to_row()))
    else:
        echo(run.summary())
        echo(f"test accuracy: {run.test_accuracy:.4f}")


@main.command(short_help="Duplicates, leaks, label errors, outliers.")
@click.option("--features", "features", default=None, metavar="ID|PATH", help="Feature set [default: the most recent complete one].")
@click.option("--threshold", type=float, default=0.92, show_default=True, help="Cosine similarity of pooled features at or above which two images are near duplicates.")
@click.option("--data", "data", default=None, type=click.Path(file_okay=False), help="Where the images are, if they moved since extraction (hashes of old sets, thumbnails).")
@click.option("--cv", type=int, default=fit_defaults.default_cv(F.head), show_default=True,
              help=f"The CV folds of the fit to check for leaks (the {F.head} head's default).")
@click.option("--test-size", type=float, default=F.test_size, show_default=True, help="The fit's hold-out fraction when there is no test/ split.")
@click.option("--seed", type=int, default=F.seed, show_default=True, help="The fit's seed (test split and folds), also seeds the label check.")
@click.option("--out", type=click.Path(file_okay=False), default="audit", show_default=True, help="Folder for audit.md, audit.html, audit.csv and thumbnails.")
@CACHE_DIR
@QUIET
@JSON
def audit(features, threshold, data, cv, test_size, seed, out, cache_dir, quiet, as_json):
    """Find exact and near duplicates, leaks across the test split and CV folds, conflicting labels, likely
    label errors and outliers in a cached feature set (the backbone is not run again)."""
    from featcache.audit import findings  # loads h5py and scikit-learn
    from featcache.audit import report as pages

    pages.check_out(out)  # before the audit, not after it
    cfg = findings.AuditConfig(features=features, cache_dir=cache_dir, data=data, threshold=threshold, cv=cv,
                                 test_size=test_size, seed=seed)
    result = findings.audit(cfg, progress_bar=not quiet)
    written = pages.write(result, out, say=not quiet)
    if as_json:
        echo(json.dumps({**result.to_dict(), "written": [str(p) for p in written]}))
    else:
        echo(pages.summary(result, written))


@main.command(short_help="List heads, parameters, default grids.")
def heads():
    """List classifier heads with their parameters and default grids."""
    for name in classifiers.list_heads():
        cls = classifiers.get_head(name)
        grid = ", ".join(f"{k}={','.join(map(str, v))}" for k, v in cls.default_grid.items()) or "-"
        echo(f"{name:8} default grid: {grid}")
        echo(f"{'':8} parameters: {', '.join(f'{k} ({r.describe()})' for k, r in cls._param_rules.items())}")



@main.command(short_help="Compare runs in a table.")
@click.option("--sort", "sort", type=click.Choice(["created", "head", "features", "cv", "test", "time"]), default="created",
              show_default=True, help="Column to sort by (cv/test: best first; time: fastest first).")
@click.option("--head", "head", default=None, help="Only runs of this head.")
@click.option("--features", "features", default=None, metavar="ID", help="Only runs on this feature set (id prefix).")
@RUNS_DIR
@JSON
def runs(sort, head, features, runs_dir, as_json):
    """Compare runs: head, feature set, best params, CV mean +- std, test accuracy, fit time."""
    from featcache.fitting.runs import list_runs

    found = [r.to_row() for r in list_runs(paths.runs_dir(runs_dir))]
    found = [r for r in found if (not head or r["head"] == head) and (not features or r["features"].startswith(features))]
    keys = {"created": "created", "head": "head", "features": ("model", "layer"), "cv": "cv_mean", "test": "test_accuracy",
            "time": "fit_seconds"}
    key = keys[sort]
    found.sort(key=lambda r: tuple(r[k] for k in key) if isinstance(key, tuple) else r[key],
               reverse=sort in ("cv", "test"))
    _listing(found, as_json, f"no runs in {paths.runs_dir(runs_dir)}: `featcache fit` makes one",
             ("RUN", "HEAD", "FEATURES", "BEST PARAMS", "CV ACCURACY", "TEST ACC", "FIT S"),
             lambda r: (r["name"], r["head"], f"{r['model']}/{r['layer']}/{r['pool']} {r['features'][:8]}",
                        ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items()) or "-",
                        f"{r['cv_mean']:.4f} +- {r['cv_std']:.4f}", f"{r['test_accuracy']:.4f}", f"{r['fit_seconds']:.2f}"))


@main.command(short_help="Re-render or compare runs and sweeps.")
@click.argument("targets", nargs=-1, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Where a comparison of several runs goes [default: RUNS_DIR/compare-TIME].")
@RUNS_DIR
def report(targets, out, runs_dir):
    """Re-render one run's report (default: the newest run), a sweep's leaderboard, or several runs side by side."""
    from featcache.fitting import report as pages  # loads the run records and matplotlib
    from featcache.sweeps import leaderboard

    runs_dir = paths.runs_dir(runs_dir)
    if len(targets) == 1 and leaderboard.is_sweep(targets[0]):
        for path in leaderboard.render(targets[0]):
            echo(f"wrote {path}")
        return
    loaded = pages.runs_to_report(targets, runs_dir)
    if len(loaded) == 1:
        for path in pages.render_run(loaded[0]):
            echo(f"wrote {path}")
        return
    folder = Path(out) if out else runs_dir / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    md, page = pages.render_comparison(loaded, folder)
    echo(md.read_text(encoding="utf-8"))
    echo(f"wrote {md} and {page}")


@main.command(short_help="Label new images with a run.")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--run", "run", default=None, type=click.Path(), help="Run directory made by `featcache fit` [default: the newest run].")
@click.option("--features", "features", default=None, metavar="ID|PATH", help="Label the rows of a cached feature set made with the run's extractor (no backbone), instead of images.")
@click.option("--batch-size", type=CountOrAuto(1), default="auto", show_default=True, help="Images per forward pass, or auto.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@CACHE_DIR
@RUNS_DIR
@QUIET
@JSON
def predict(inputs, run, features, batch_size, device, cache_dir, runs_dir, quiet, as_json):
    """Label new images (files or folders), or the rows of a cached feature set, with a run's head."""
    from featcache.fitting import predict as prediction  # loads torch and the run records
    from featcache.fitting import runs

    if bool(inputs) == bool(features):
        raise click.UsageError("give images or folders to label, or --features ID, not both")
    if run is None:
        run = runs.latest(paths.runs_dir(runs_dir))
        if not quiet:
            echo(f"using run {run} (the newest)", err=True)

    if features:
        results = prediction.predict_features(features, run, cache_dir=cache_dir)
    else:
        results = prediction.predict(inputs, run, batch_size=batch_size, device=device,
                              cache_dir=cache_dir, progress_bar=not quiet)
    if as_json:
        echo(json.dumps([r.as_dict() for r in results]))
        return
    for r in results:
        d = r.as_dict()
        if r.error:
            echo(f"{printable(d['path'])}\terror: {printable(r.error)}")
        else:
            echo(f"{printable(d['path'])}\t{printable(r.label)}\t{r.confidence:.4f}")


@main.command(short_help="Backbones x layers x heads: a leaderboard.")
@click.option("--data", "data", default=None, type=click.Path(), help="Image folder [default: the sweep file's data, else ./data].")
@click.option("--model", "-m", "models", multiple=True, metavar="MODEL[@WEIGHTS]", help="Backbone (repeatable); e.g. resnet18, efficientnet_lite0@none.")
@click.option("--layer", "layers", multiple=True, help="Cut (repeatable; applied to every model) [default: each model's default].")
@click.option("--pool", "pools", multiple=True, type=click.Choice(POOLS), help="Pooling (repeatable) [default: none].")
@click.option("--views", "views", multiple=True, metavar="SPEC", help="Views recipe (repeatable), e.g. --views none --views flip --views rrc:8 [default: none].")
@click.option("--head", "heads", multiple=True, help=f"Head (repeatable) [default: {F.head}].")
@click.option("--param", "params", multiple=True, metavar="HEAD.NAME=v1,v2", help="A head's search grid, e.g. svm.C=0.1,1,10 (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A sweep TOML file instead of --model/--layer/--pool/--head/--param; --data, --cv, --test-size, --seed and --image-size override its values.")
@click.option("--image-size", type=int, default=None, help=f"Crop size for every model, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px [default: each weights' own].")
@click.option("--cv", type=int, default=None, help=f"Folds, the same for every row [default: the file's, else {fit_defaults.SWEEP_CV}].")
@click.option("--test-size", type=float, default=None, help=f"Hold-out fraction when there is no test/ split [default: the file's, else {F.test_size:g}].")
@click.option("--seed", type=int, default=None, help=f"Seed of the split and folds shared by all rows [default: the file's, else {F.seed}].")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Sweep directory [default: ./sweeps/sweep-HASH; rerun to resume].")
@CACHE_DIR
@QUIET
def sweep(data, models, layers, pools, views, heads, params, config_file, image_size, cv, test_size, seed, out, cache_dir, quiet):
    """Compare backbones x layers x pooling x views x heads on your images: one leaderboard."""

    if config_file and (models or layers or pools or views or heads or params):
        raise click.UsageError("give either --config or --model/--layer/--pool/--views/--head/--param, not both")
    folder = featcache.sweep(data=data, models=list(models), layers=list(layers), pools=list(pools), views=list(views), heads=list(heads),
                       params=list(params), config_file=config_file, image_size=image_size, cv=cv, test_size=test_size,
                       seed=seed, out=out, cache_dir=cache_dir, progress_bar=not quiet)
    echo((folder / "leaderboard.md").read_text(encoding="utf-8"))
    echo(f"leaderboard: {folder / 'leaderboard.html'}")


def _cache_path(cache_dir):
    return paths.cache_dir(cache_dir)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


if __name__ == "__main__":
    main()
