"""``extract``: images -> a cached feature set, reusing whatever is already done.

In order of preference: a complete feature set with the same id (a cache hit: no model is loaded),
committed batches of an interrupted run (resume), rows of an older feature set made by the same
extractor from an earlier state of the same folder (incremental update); only the rest is run
through the backbone.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import backbones, cache, config, fingerprint, progress
from .errors import CacheError, FeatcacheError
from .images import DECODERS, Decode
from .manifest import Manifest, scan
from .staging import Staging
from .store import FORMAT_VERSION, FeatureSet, write_isolated

DTYPES = ("float16", "float32")
ON_ERROR = ("skip", "fail")
ENGINES = ("local", "ray")


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
        return (
            f"feature set {self.id}: {self.n_rows} x {shape} -> {self.path} "
            f"({how}{', ' + ', '.join(extra) if extra else ''}; {len(self.skipped)} skipped)"
        )


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None or isinstance(shard, tuple):
        return shard
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise FeatcacheError(f"--shard {shard!r} is not I/N: use e.g. --shard 0/4 (I counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise FeatcacheError(f"--shard {shard}: I must be in 0..{max(n - 1, 0)} (I counts from 0)")
    return i, n


def shard_range(n_entries: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, n_entries
    i, n = shard
    return i * n_entries // n, (i + 1) * n_entries // n


def extract(
    data: str | os.PathLike = config.DEFAULT_DATA_DIR,
    model: str = config.DEFAULT_MODEL,
    weights: str = "DEFAULT",
    layer: str | None = None,
    pool: str = "none",
    image_size: int | None = None,
    dtype: str = "float16",
    batch_size: int | str = "auto",
    workers: int | str = "auto",
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    on_error: str = "skip",
    shard: str | tuple[int, int] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    draft: bool = True,
    decode: str = "cpu",
    lock_timeout: float = -1,
    incremental: bool = True,
    compile: bool = False,
    streams: int | str = "auto",
    progress_bar: bool = True,
) -> ExtractResult:
    """Extract features of every image under ``data`` into the cache and return where they are.

    ``decode``: "cpu" decodes in the DataLoader workers with Pillow (``draft`` applies); "gpu" decodes
    JPEGs as batches on ``device`` with torchvision (meant for CUDA; it runs on the CPU too, slower),
    always at full size. The two give slightly different pixels, hence different feature-set ids.
    """
    started = time.perf_counter()
    if dtype not in DTYPES:
        raise FeatcacheError(f"unknown dtype {dtype!r}: use float16 or float32")
    if on_error not in ON_ERROR:
        raise FeatcacheError(f"unknown --on-error {on_error!r}: use skip or fail")
    if str(streams) != "auto" and (not str(streams).isdigit() or int(streams) < 1):
        raise FeatcacheError(f"streams={streams!r}: use a whole number >= 1, or auto")
    if engine not in ENGINES:
        raise FeatcacheError(f"unknown engine {engine!r}: use local or ray")
    if decode not in DECODERS:
        raise FeatcacheError(f"unknown decode {decode!r}: use cpu or gpu")
    if decode == "gpu" and engine == "ray":
        raise FeatcacheError("--decode gpu runs in the local engine only: drop --engine ray, or use --decode cpu with it")
    shard = parse_shard(shard)
    root = ensure_writable(config.cache_dir(cache_dir))
    manifest = scan(data)
    spec = backbones.resolve(model, weights=weights, layer=layer, pool=pool, image_size=image_size)

    import torch  # after the cheap checks: a bad argument fails before torch's start-up cost

    from . import engine as local

    dev = local.resolve_device(device)
    prec = local.resolve_precision(precision, dev)
    decoding = Decode(draft=draft and decode == "cpu", decoder=decode)  # the gpu decoder has no draft mode
    key = fingerprint.config_key(spec, decoding, dtype, prec)
    fsid = fingerprint.feature_set_id(key, manifest.sha256)
    name = cache.file_stem(fsid, shard)
    final = root / f"{name}.h5"

    hit = _cache_hit(final, fsid, manifest, started)
    if hit:
        return hit
    with cache.lock(root, name, lock_timeout, progress_bar):
        hit = _cache_hit(final, fsid, manifest, started)  # another process may have finished it
        if hit:
            return hit
        lo, hi = shard_range(len(manifest), shard)
        wanted = np.arange(lo, hi)
        bs = int(batch_size) if str(batch_size) != "auto" else local.auto_batch_size(spec, dev)
        header = {
            "id": fsid, "name": name, "key": key, "manifest_sha256": manifest.sha256,
            "entries": [int(lo), int(hi)], "feature_shape": list(spec.feature_shape), "dtype": dtype,
        }
        staging_dir = root / f"{name}.partial"
        # Batch size, compilation and streams move the last bits, not the values: a resume keeps what
        # was recorded. A compiled module runs from one thread only (Dynamo is not meant for concurrent calls).
        n_streams = 1 if compile else int(streams) if str(streams) != "auto" else local.auto_streams(dev)
        run_settings = {"batch_size": bs, "compile": bool(compile), "streams": n_streams}
        previous = Staging.read_header(staging_dir)
        if previous and {k: v for k, v in previous.items() if k not in run_settings} == header:
            recorded = {k: previous.get(k, v) for k, v in run_settings.items()}
            if recorded != run_settings:
                progress.say(f"resuming with {recorded} as recorded (keeps features bit-identical)", progress_bar)
                run_settings = recorded
        bs, compile, n_streams = run_settings["batch_size"], run_settings["compile"], run_settings["streams"]
        staging = Staging.open(staging_dir, {**header, **run_settings})
        resumed = staging.n_rows() + len(staging.skipped())
        if resumed:
            progress.say(f"resuming feature set {fsid}: {resumed} of {hi - lo} images already done", progress_bar)
        reused = 0
        if not resumed and incremental:
            reused = reuse_rows(root, key, manifest, wanted, staging, progress_bar)
        covered = staging.covered()
        todo = [int(i) for i in wanted if int(i) not in covered]
        files = [str(manifest.root / manifest.paths[i]) for i in todo]
        known_bad = {i: r for i, r in manifest.unreadable.items() if lo <= i < hi}
        workers_n = int(workers) if str(workers) != "auto" else local.auto_workers(dev)
        options = local.EngineOptions(batch_size=bs, workers=workers_n, device=dev, precision=prec, on_error=on_error,
                                      compile=compile, streams=n_streams)

        t0 = time.perf_counter()
        if todo and decode == "gpu":
            from . import jpeg

            jpeg.check_available(dev)
        # The model is built before the bar starts, so missing weights fail before any progress shows.
        forward = local.Forward(spec, dev, prec, options.channels_last, bs if compile else None) if todo else None
        bar = progress.bar(len(todo), f"extract {model}", progress_bar)
        try:
            if engine == "ray" and todo:
                from . import ray_engine

                del forward  # the actors hold the replicas; building one here checked the weights
                ray_engine.run(spec, files, todo, known_bad, staging, options, decoding, dtype, bar, ray_address)
            elif todo:
                local.run(forward, files, todo, known_bad, staging, options, decoding, dtype, bar)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        args = {
            "data": str(data), "model": model, "weights": spec.backbone.weights.path or weights, "layer": layer,
            "pool": pool, "image_size": image_size, "dtype": dtype, "precision": precision, "draft": draft,
            "decode": decode, "cache_dir": str(cache_dir) if cache_dir else None, "compile": compile, "streams": n_streams,
        }
        attrs = _attrs(fsid, key, spec, manifest, prec, dev, bs, shard, (lo, hi), args, seconds, len(todo), torch)
        write_isolated(final, attrs, manifest, staging, spec.feature_shape, dtype)
        staging.remove()
    with FeatureSet(final) as fs:
        result = ExtractResult(
            id=fsid, path=final, n_rows=len(fs), feature_shape=fs.feature_shape, skipped=fs.skipped,
            extracted=len(todo), reused=reused, resumed=resumed, seconds=time.perf_counter() - started,
            images_per_second=(len(todo) / seconds) if todo and seconds > 0 else None, ignored=manifest.ignored,
        )
    return result


def _cache_hit(final: Path, fsid: str, manifest: Manifest, started: float) -> ExtractResult | None:
    if not final.exists():
        return None
    with FeatureSet(final) as fs:  # raises a clear CacheError if the file is corrupt
        if fs.id != fsid:
            raise CacheError(f"{final} holds feature set {fs.id}, not {fsid}: remove it with `featcache cache rm {final.stem}`")
        return ExtractResult(
            id=fsid, path=final, n_rows=len(fs), feature_shape=fs.feature_shape, skipped=fs.skipped,
            cache_hit=True, seconds=time.perf_counter() - started, ignored=manifest.ignored,
        )


def reuse_rows(root: Path, key: dict, manifest: Manifest, wanted: np.ndarray, staging: Staging, say: bool) -> int:
    """Copy rows of unchanged files from the newest feature set of the same extractor and folder."""
    donor = cache.newest_with_config(root, fingerprint.config_id(key), str(manifest.root))
    if donor is None:
        return 0
    with FeatureSet(donor) as old:
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
        for start, block in old.iter_blocks():
            paths = row_paths[start:start + len(block)]
            keep = [k for k, p in enumerate(paths) if in_range(p)]
            if keep:
                staging.commit(np.array([new_index[paths[k]] for k in keep]), block[keep], [])
                reused += len(keep)
    if reused:
        progress.say(f"incremental update: reusing {reused} unchanged images from feature set {old.id}", say)
    return reused


def ensure_writable(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise CacheError(
            f"cache dir {root} is not writable ({err.strerror or err}): choose another with --cache-dir or {config.CACHE_DIR_ENV}"
        ) from None
    return root


def _attrs(fsid, key, spec, manifest, prec, dev, bs, shard, entries, args, seconds, n_done, torch) -> dict:
    import h5py
    import PIL
    import torchvision

    b = spec.backbone
    attrs = {
        "format": FORMAT_VERSION,
        "id": fsid,
        "config_id": fingerprint.config_id(key),
        "key": key,
        "model": b.name,
        "family": b.family,
        "arch": b.arch,
        "weights": b.weights.identity,
        "weights_kind": b.weights.kind,
        "weights_path": b.weights.path or "",
        "layer": spec.layer,
        "pool": spec.pool,
        "preprocess": b.preprocess.to_dict(),
        "decode": key["decode"],
        "dtype": args["dtype"],
        "precision": prec,
        "feature_shape": list(spec.feature_shape),
        "data_root": str(manifest.root),
        "manifest_sha256": manifest.sha256,
        "n_entries": len(manifest),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "batch_size": bs,
        "streams": args.get("streams"),
        "compiled": bool(args.get("compile")),
        "extract_seconds": round(seconds, 3),
        "images_per_second": round(n_done / seconds, 2) if n_done and seconds > 0 else 0.0,
        "versions": {
            "featcache": _version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": _version("timm"),
            "h5py": h5py.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
        "extract_args": args,
    }
    if shard:
        attrs.update(shard_index=shard[0], shard_count=shard[1], shard_start=entries[0], shard_stop=entries[1])
    return attrs


def _version(dist: str = "featcache") -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
