"""``featcache cache merge``: join the shard files of ``extract --shard I/N`` into one feature set.

Shards are contiguous slices of the manifest, so the merged rows are the shards' rows in shard
order, and the merged file is byte-for-byte what one unsharded extraction would have written (same
id, same row order, same content hash when the features agree).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from featcache.core import paths
from featcache.core.errors import CacheError
from featcache.extraction.extract import ExtractResult, read_from
from featcache.store import cache
from featcache.store.featureset import FeatureSet, write_isolated
from featcache.store.integrity import check


class ShardRows:
    """The rows of N shard files, in order, as a ``write_feature_set`` source."""

    def __init__(self, shards: list[FeatureSet]):
        self.shards = shards

    def n_rows(self) -> int:
        return sum(len(s) for s in self.shards)

    def skipped(self) -> dict[int, str]:
        out = {}
        for s in self.shards:
            index_of = {p: i for i, p in enumerate(s.manifest().paths)}
            out.update({index_of[p]: r for p, r in s.skipped})
        return out

    def rows_in_order(self, block_rows: int):
        for s in self.shards:
            index = s.index
            for start, block in s.iter_blocks(block_rows):
                yield index[start:start + len(block)], block


def shard_files(ref: str, root: Path) -> list[Path]:
    return sorted(root.glob(f"{ref}*{cache.SHARD_MARK}*-of-*.h5"))


def merge(ref: str, cache_dir=None, progress_bar: bool = True, keep_shards: bool = False) -> ExtractResult:
    root = paths.cache_dir(cache_dir)
    files = shard_files(ref, root)
    if not files:
        raise CacheError(f"no shards of feature set {ref!r} in {root}: extract them with `featcache extract --shard I/N`")
    ids = {re.sub(r"\.shard-.*", "", f.name) for f in files}
    if len(ids) > 1:
        raise CacheError(f"{ref!r} matches shards of several feature sets ({', '.join(sorted(ids))}): give more of the id")
    fsid = ids.pop()
    final = root / f"{fsid}.h5"
    shards = [FeatureSet(f) for f in files]
    try:
        for s in shards:
            check(s)  # the merged file gets a fresh hash: an altered shard must not pass into it
        shards.sort(key=lambda s: s.info.shard.index)
        check_consistent(fsid, shards)
        first = shards[0]
        seconds = round(sum(s.info.made.extract_seconds for s in shards), 3)
        info = replace(first.info, shard=None, merged_from=len(shards), made=replace(first.info.made, extract_seconds=seconds),
                       n_rows=None, n_skipped=None, content_sha256=None)
        manifest = first.manifest()
        manifest.content_hashes = merged_hashes([s.manifest() for s in shards])
        with cache.lock(root, fsid, -1, progress_bar):
            write_isolated(final, info.to_attrs(), manifest, ShardRows(shards), first.feature_shape, first.info.dtype)
    finally:
        for s in shards:
            s.close()
    if not keep_shards:
        for f in files:
            f.unlink()
    with FeatureSet(final) as fs:
        return ExtractResult(id=fsid, path=final, n_rows=len(fs), feature_shape=fs.feature_shape, skipped=fs.skipped,
                             **read_from(fs.manifest()))


def merged_hashes(manifests: list) -> list[str] | None:
    """Each shard hashed its own slice of the files: the union (None if no shard recorded any)."""
    recorded = [m.content_hashes for m in manifests if m.content_hashes is not None]
    if not recorded:
        return None
    return [next((h[i] for h in recorded if h[i]), "") for i in range(len(recorded[0]))]


def check_consistent(fsid: str, shards: list[FeatureSet]) -> None:
    counts = {s.info.shard.count for s in shards}
    if len(counts) != 1:
        raise CacheError(f"shards of {fsid} disagree on N ({sorted(counts)}): re-extract them with one --shard I/N scheme")
    n = counts.pop()
    have = [s.info.shard.index for s in shards]
    missing = sorted(set(range(n)) - set(have))
    if missing:
        listed = ", ".join(f"{i}/{n}" for i in missing)
        raise CacheError(f"cannot merge feature set {fsid}: missing shard(s) {listed}; run `featcache extract ... --shard I/N` for each")
    first = shards[0].info
    for s in shards[1:]:
        for key in ("id", "key", "manifest_sha256", "dtype", "feature_shape"):
            if getattr(s.info, key) != getattr(first, key):
                raise CacheError(
                    f"shard {s.info.shard.index}/{n} of {fsid} differs from shard 0 in {key}: re-extract it with the same data and options"
                )
    bounds = [(s.info.shard.start, s.info.shard.stop) for s in shards]
    tiled = all(prev[1] == cur[0] for prev, cur in zip(bounds, bounds[1:]))
    if bounds[0][0] != 0 or bounds[-1][1] != first.n_entries or not tiled:
        raise CacheError(f"shards of {fsid} do not tile the manifest: re-extract them with one --shard I/N scheme")
    if any(not in_order(s.index, s.view) for s in shards):
        raise CacheError(f"a shard of {fsid} has rows out of order: re-extract it")


def in_order(index: np.ndarray, view: np.ndarray) -> bool:
    """Rows in manifest order, an image's views consecutive and in order (0, 1, ...)."""
    step, view_step = np.diff(index), np.diff(view)
    return bool(np.all((step > 0) | ((step == 0) & (view_step == 1))))
