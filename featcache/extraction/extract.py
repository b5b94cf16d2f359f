"""``extract``: images -> a cached feature set, reusing whatever is already done.

In order of preference: a complete feature set with the same id (a cache hit: no model is loaded),
committed batches of an interrupted run (resume), rows of an older feature set made by the same
extractor from an earlier state of the same folder (incremental update); only the rest is run
through the backbone.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np
import PIL
import torch
import torchvision

from featcache import backbones
from featcache.backbones.spec import ExtractorSpec
from featcache.config.extract import ExtractConfig
from featcache.core import paths, progress
from featcache.core.errors import CacheError, DamagedError
from featcache.core.files import output_dir
from featcache.core.text import display, printable
from featcache.extraction import engine, jpeg, ray_engine
from featcache.extraction.engine import Resolved, resolve
from featcache.extraction.scan import SPLITS, hash_files, scan
from featcache.store import cache, fingerprint
from featcache.store.featureset import FeatureSet, write_isolated
from featcache.store.info import Extractor, FeatureSetInfo, Made, Shard
from featcache.store.integrity import open_verified
from featcache.store.manifest import Manifest
from featcache.store.staging import Staging


@dataclass
class ExtractResult:
    id: str
    path: Path
    n_rows: int
    feature_shape: tuple[int, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cache_hit: bool = False
    extracted: int = 0
    reused: int = 0
    resumed: int = 0
    seconds: float = 0.0
    images_per_second: float | None = None
    ignored: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # images under --data that the --labels file leaves out
    views: int = 1  # rows per image
    class_names: list[str] = field(default_factory=list)  # as read from the folder layout or --labels ([]: unlabelled)
    splits: dict[str, int] = field(default_factory=dict)  # images per split folder ({}: no split layout)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why): under --data but not read

    SHOWN_CLASSES = 5  # names in the summary line; --json has them all

    def open(self) -> FeatureSet:
        return FeatureSet(self.path)

    def summary(self) -> str:
        shape = "x".join(map(str, self.feature_shape))
        how = "cache hit" if self.cache_hit else (f"{self.images_per_second:.1f} img/s" if self.images_per_second else "no images to extract")
        extra = []
        if self.reused:
            extra.append(f"{self.reused} reused")
        if self.resumed:
            extra.append(f"{self.resumed} resumed")
        rows = f"{self.n_rows // self.views} images x {self.views} views" if self.views > 1 else str(self.n_rows)
        return (
            f"feature set {self.id}: {rows} x {shape} -> {self.path} "
            f"({how}{', ' + ', '.join(extra) if extra else ''}; {len(self.skipped)} skipped); {self.reading()}"
        )

    def reading(self) -> str:
        """How the folder was read (classes, splits), so a layout read as something else shows at once."""
        if not self.class_names:
            return "unlabelled (no class folders)"
        names = [printable(c) for c in self.class_names[:self.SHOWN_CLASSES]]
        more = len(self.class_names) - len(names)
        text = f"{len(self.class_names)} class{'es' if len(self.class_names) != 1 else ''}: {', '.join(names)}"
        text += f", ... ({more} more)" if more else ""
        if self.splits:
            text += "; splits: " + ", ".join(f"{name} {n}" for name, n in self.splits.items())
        return text

    def notes(self, cfg: ExtractConfig) -> list[str]:
        """What the user should know beside the summary (stderr): files skipped, ignored, not read, unlisted."""
        out = []
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} file(s):")
            out += [f"  {printable(path)}: {printable(reason)}" for path, reason in self.skipped]
        if self.ignored:
            out.append(f"ignored {len(self.ignored)} non-image file(s), e.g. {printable(self.ignored[0])}")
        if self.left_out:
            out.append(f"{len(self.left_out)} item(s) under {printable(cfg.data)} not read:")
            out += [f"  {printable(path)}: {printable(reason)}" for path, reason in self.left_out]
        if self.unlisted:
            out.append(f"left out {len(self.unlisted)} image(s) under {printable(cfg.data)} that {printable(str(cfg.labels))} "
                       f"does not list, e.g. {printable(self.unlisted[0])} (add rows for them to include them)")
        return out

    def to_dict(self) -> dict:
        return {
            "id": self.id, "path": str(self.path), "rows": self.n_rows, "views": self.views, "feature_shape": list(self.feature_shape),
            "cache_hit": self.cache_hit, "extracted": self.extracted, "reused": self.reused, "resumed": self.resumed,
            "images_per_second": self.images_per_second, "seconds": round(self.seconds, 3),
            "skipped": [{"path": display(p), "reason": r} for p, r in self.skipped],
            "ignored": [display(p) for p in self.ignored],
            "unlisted": [display(p) for p in self.unlisted],
            "class_names": [display(c) for c in self.class_names], "splits": self.splits,
            "left_out": [{"path": display(p), "reason": r} for p, r in self.left_out],
        }


def shard_range(n_entries: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, n_entries
    i, n = shard
    return i * n_entries // n, (i + 1) * n_entries // n


@dataclass(frozen=True)
class Plan:
    """Everything fixed before any image is decoded: the record, the folder, the extractor, the id."""

    config: ExtractConfig
    manifest: Manifest
    spec: ExtractorSpec
    settings: Resolved
    key: dict
    id: str
    root: Path
    name: str  # file stem: the id, plus the shard for a shard file
    entries: tuple[int, int]  # the manifest slice this run covers

    @property
    def final(self) -> Path:
        return self.root / f"{self.name}.h5"

    @property
    def staging_dir(self) -> Path:
        return self.root / f"{self.name}.partial"

    @property
    def views(self):
        return self.config.viewing()

    def header(self) -> dict:
        """What a staging directory must match to be resumed (plus the run settings it keeps)."""
        header = {
            "id": self.id, "name": self.name, "key": self.key, "manifest_sha256": self.manifest.sha256,
            "entries": list(self.entries), "feature_shape": list(self.spec.feature_shape), "dtype": self.config.dtype,
        }
        if self.views.count > 1:  # rows per committed image (a header without it: one)
            header["views"] = self.views.count
        return header


@dataclass
class Ran:
    """What the backbone actually did in this call."""

    extracted: int = 0
    seconds: float = 0.0
    compiled: bool = False
    compile_error: str | None = None


def extract(data_or_config: ExtractConfig | str | os.PathLike | None = None, /, *, progress_bar: bool = True,
            **settings) -> ExtractResult:
    """Extract features of every image under ``data`` into the cache and return where they are.

    ``extract("photos", model="resnet50", pool="avg")`` or ``extract(ExtractConfig(...))``; the
    settings are the fields of ``ExtractConfig`` (see there, or ``featcache extract --help``).
    """
    cfg = ExtractConfig.make(data_or_config, **settings)
    started = time.perf_counter()
    plan = make_plan(cfg)
    hit = _cache_hit(plan, started, progress_bar)
    if hit:
        return hit
    with cache.lock(plan.root, plan.name, cfg.lock_timeout, progress_bar):
        hit = _cache_hit(plan, started, False)  # another process may have finished it
        if hit:
            return hit
        plan, staging, resumed = resume(plan, progress_bar)
        reused = 0
        if not resumed and cfg.incremental:
            reused = reuse_rows(plan.root, plan.key, plan.manifest, np.arange(*plan.entries), staging, progress_bar)
        ran = run(plan, staging, progress_bar)
        plan = with_content_hashes(plan, progress_bar)
        finalize(plan, staging, ran)
    with FeatureSet(plan.final) as fs:
        return ExtractResult(
            id=plan.id, path=plan.final, n_rows=len(fs), feature_shape=fs.feature_shape, skipped=fs.skipped,
            extracted=ran.extracted, reused=reused, resumed=resumed, seconds=time.perf_counter() - started,
            images_per_second=(ran.extracted / ran.seconds) if ran.extracted and ran.seconds > 0 else None,
            views=plan.views.count, **read_from(plan.manifest),
        )


def make_plan(cfg: ExtractConfig) -> Plan:
    """Scan the folder, resolve the extractor and the ``auto`` settings, compute the id."""
    root = ensure_writable(paths.cache_dir(cfg.cache_dir))
    manifest = scan(cfg.data, cfg.labels)
    spec = backbones.for_config(cfg)
    views = cfg.viewing()
    try:
        views.check(spec.backbone.preprocess)
    except ValueError as err:
        raise CacheError(str(err)) from None
    settings = resolve(cfg, spec)  # imports torch: after the cheap checks, so a bad argument fails fast
    key = fingerprint.config_key(spec, cfg.decoding(), cfg.dtype, settings.precision, views)
    fsid = fingerprint.feature_set_id(key, manifest.sha256)
    return Plan(cfg, manifest, spec, settings, key, fsid, root, cache.file_stem(fsid, cfg.shard),
                shard_range(len(manifest), cfg.shard))


def resume(plan: Plan, say: bool) -> tuple[Plan, Staging, int]:
    """Open the staging directory: an interrupted run of the same set resumes with its recorded
    batch size, compilation and streams, which move the last bits of the features, not the values."""
    header = plan.header()
    wanted = plan.settings.run_settings()
    previous = Staging.read_header(plan.staging_dir)
    if previous and {k: v for k, v in previous.items() if k not in wanted} == header:
        recorded = {k: previous.get(k, v) for k, v in wanted.items()}
        if recorded != wanted:
            progress.say(f"resuming with {recorded} as recorded (keeps features bit-identical)", say)
            plan = replace(plan, settings=replace(plan.settings, **recorded))
    staging = Staging.open(plan.staging_dir, {**header, **plan.settings.run_settings()})
    if staging.dropped:
        progress.say(f"dropped {len(staging.dropped)} damaged batch(es) of the interrupted extraction of {plan.id} "
                     f"({staging.dropped[0]}): extracting their images again", say)
    resumed = staging.n_images() + len(staging.skipped())
    if resumed:
        progress.say(f"resuming feature set {plan.id}: {resumed} of {plan.entries[1] - plan.entries[0]} images already done", say)
    return plan, staging, resumed


def run(plan: Plan, staging: Staging, progress_bar: bool) -> Ran:
    """Run the backbone over every entry the staging directory does not cover yet."""
    cfg, s, manifest = plan.config, plan.settings, plan.manifest
    lo, hi = plan.entries
    covered = staging.covered()
    todo = [i for i in range(lo, hi) if i not in covered]
    if not todo:
        return Ran()
    options = engine.EngineOptions(batch_size=s.batch_size, workers=s.workers, device=s.device, precision=s.precision,
                                   on_error=cfg.on_error, compile=s.compile, streams=s.streams)
    job = engine.Job(spec=plan.spec, files=[str(manifest.root / manifest.paths[i]) for i in todo], indices=todo,
                     known_bad={i: r for i, r in manifest.unreadable.items() if lo <= i < hi}, staging=staging,
                     options=options, decode=cfg.decoding(), dtype=cfg.dtype, views=plan.views)
    t0 = time.perf_counter()
    if cfg.decode == "gpu":
        jpeg.check_available(s.device)
    # The model is built before the bar starts, so missing weights fail before any progress shows.
    forward = engine.Forward(plan.spec, s.device, s.precision, options.channels_last, s.batch_size if s.compile else None)
    bar = progress.bar(len(todo), f"extract {cfg.model}", progress_bar)
    try:
        if cfg.engine == "ray":
            del forward  # the actors hold the replicas; building one here checked the weights
            ray_engine.run(job, bar, cfg.ray_address)
            return Ran(len(todo), time.perf_counter() - t0, compiled=False)
        engine.run(job, forward, bar)
    finally:
        bar.close()
    return Ran(len(todo), time.perf_counter() - t0, compiled=forward.is_compiled, compile_error=forward.compile_error)


def with_content_hashes(plan: Plan, progress_bar: bool) -> Plan:
    """The plan with the SHA-256 of every file it covers (``audit`` finds byte-identical files by them).

    A separate pass over the files rather than in the decoding workers: it serves the local and Ray
    engines, shards and incremental updates alike; the files were just read, so they come from the
    page cache, and hashes already recorded for unchanged files of the folder are reused.
    """
    lo, hi = plan.entries
    bar = progress.bar(hi - lo, "hash files", progress_bar)
    try:
        known = cache.known_hashes(plan.root, str(plan.manifest.root))
        hashes = hash_files(plan.manifest, range(lo, hi), known, bar)
    finally:
        bar.close()
    return replace(plan, manifest=replace(plan.manifest, content_hashes=hashes))


def finalize(plan: Plan, staging: Staging, ran: Ran) -> None:
    """Assemble the staged rows into the feature-set file (atomically), then drop the staging."""
    write_isolated(plan.final, _info(plan, ran).to_attrs(), plan.manifest, staging, plan.spec.feature_shape, plan.config.dtype)
    staging.remove()


def _cache_hit(plan: Plan, started: float, say: bool) -> ExtractResult | None:
    """The complete file of this id, if it passes ``check``; a damaged one is extracted again (``finalize``
    replaces it atomically), so the command that made a set is also the one that repairs it."""
    if not plan.final.exists():
        return None
    try:
        fs = open_verified(plan.final)
    except DamagedError as err:
        progress.say(f"feature set {plan.id} in {plan.final} is damaged ({err.reason}): extracting it again to replace it", say)
        return None
    with fs:
        if fs.id != plan.id:
            raise CacheError(f"{plan.final} holds feature set {fs.id}, not {plan.id}: remove it with `featcache cache rm {plan.final.stem}`")
        return ExtractResult(
            id=plan.id, path=plan.final, n_rows=len(fs), feature_shape=fs.feature_shape, skipped=fs.skipped,
            cache_hit=True, seconds=time.perf_counter() - started, views=fs.n_views, **read_from(plan.manifest),
        )


def read_from(manifest: Manifest) -> dict:
    """The ``ExtractResult`` fields that say how the folder was read."""
    return {"ignored": manifest.ignored, "unlisted": manifest.unlisted, "left_out": manifest.left_out,
            "class_names": manifest.class_names,
            "splits": {name: manifest.splits.count(name) for name in SPLITS if name in manifest.splits}}


def reuse_rows(root: Path, key: dict, manifest: Manifest, wanted: np.ndarray, staging: Staging, say: bool) -> int:
    """Copy rows of unchanged files from the newest feature set of the same extractor and folder."""
    donor = cache.newest_with_config(root, fingerprint.config_id(key), str(manifest.root))
    if donor is None:
        return 0
    try:
        old = open_verified(donor)
    except CacheError as err:  # its rows would enter the new set under a fresh hash: never reuse altered ones
        progress.say(f"note: not reusing rows of feature set {donor.stem}: {getattr(err, 'reason', err)}", say)
        return 0
    with old:
        signatures = old.manifest_signatures()
        old_paths = list(signatures)
        current = manifest.signatures()
        reusable = {p for p in old_paths if current.get(p) == tuple(signatures[p])}
        new_index = {p: i for i, p in enumerate(manifest.paths)}
        lo, hi = int(wanted[0]) if len(wanted) else 0, int(wanted[-1]) + 1 if len(wanted) else 0
        in_range = lambda p: p in reusable and lo <= new_index[p] < hi  # noqa: E731
        skipped = [(new_index[p], r) for p, r in old.skipped if in_range(p)]
        row_paths = old.paths
        reused = len(skipped)
        if skipped:
            staging.commit(np.empty(0, dtype=np.int64), None, skipped)
        views = old.n_views  # the same extractor, so the same views: each image's rows stay together
        chunk = old.features.chunks[0] if old.features.chunks else max(len(old), 1)
        for start, block in old.iter_blocks(chunk * views):
            paths = row_paths[start:start + len(block)]
            keep = [k for k, p in enumerate(paths) if in_range(p)]
            if keep:
                staging.commit(np.array([new_index[paths[k]] for k in keep[::views]]), block[keep], [])
                reused += len(keep) // views
    if reused:
        progress.say(f"incremental update: reusing {reused} unchanged images from feature set {old.id}", say)
    return reused


def ensure_writable(root: Path) -> Path:
    return output_dir(root, cache=True, what="cache dir", fix=f"choose another with --cache-dir or {paths.CACHE_DIR_ENV}",
                      error=CacheError)


def _info(plan: Plan, ran: Ran) -> FeatureSetInfo:
    """The feature set's record, as it will be written (the row counts and content hash are added then)."""
    b, cfg, s = plan.spec.backbone, plan.config, plan.settings
    versions = {"featcache": _version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
                "timm": _version("timm"), "h5py": h5py.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
                "python": platform.python_version()}
    if b.family == "openclip":
        versions["open_clip"] = _version("open_clip_torch")
    return FeatureSetInfo(
        id=plan.id, config_id=fingerprint.config_id(plan.key), key=plan.key,
        extractor=Extractor(model=b.name, family=b.family, arch=b.arch, weights=b.weights.identity, weights_kind=b.weights.kind,
                            weights_path=b.weights.path or "", layer=plan.spec.layer, pool=plan.spec.pool,
                            preprocess=b.preprocess, feature_shape=tuple(plan.spec.feature_shape)),
        decode=cfg.decoding(), dtype=cfg.dtype, precision=s.precision, views=plan.views,
        # The record as asked, with a local weights file and the labels file named by their resolved
        # paths (``predict`` and the refresh command rebuild the extractor from it, from any directory).
        config=replace(cfg, weights=b.weights.path or cfg.weights, labels=plan.manifest.labels_file),
        data_root=str(plan.manifest.root), manifest_sha256=plan.manifest.sha256, n_entries=len(plan.manifest),
        # What ran, not what was asked: a compile that failed and fell back to eager is not "compiled".
        made=Made(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=str(s.device),
                  batch_size=s.batch_size, streams=s.streams, compiled=bool(ran.compiled), compile_error=ran.compile_error,
                  extract_seconds=round(ran.seconds, 3), versions=versions,
                  images_per_second=round(ran.extracted / ran.seconds, 2) if ran.extracted and ran.seconds > 0 else 0.0),
        shard=Shard(cfg.shard[0], cfg.shard[1], *plan.entries) if cfg.shard else None,
    )


def _version(dist: str = "featcache") -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
