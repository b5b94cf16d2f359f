"""The cache directory: finding, listing, locking, verifying, removing and merging feature sets."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import config, progress
from .errors import CacheError
from .staging import Staging
from .store import SUFFIX, FeatureSet, peek, verify

SHARD_MARK = ".shard-"


def file_stem(fsid: str, shard: tuple[int, int] | None = None) -> str:
    return f"{fsid}{SHARD_MARK}{shard[0]}-of-{shard[1]}" if shard else fsid


@contextlib.contextmanager
def lock(root: Path, name: str, timeout: float = -1, say: bool = True):
    """One writer per feature set; a second process waits (or stops after ``timeout`` seconds)."""
    from filelock import FileLock, Timeout

    lock_file = FileLock(str(root / f"{name}.lock"))
    try:
        lock_file.acquire(timeout=0)
    except Timeout:
        if timeout == 0:
            raise CacheError(
                f"another featcache process is extracting feature set {name}: wait for it to finish "
                "(or pass --lock-timeout SECONDS to wait)"
            ) from None
        progress.say(f"waiting for another featcache process that is extracting feature set {name} ...", say)
        try:
            lock_file.acquire(timeout=timeout)
        except Timeout:
            raise CacheError(
                f"feature set {name} is still locked by another featcache process after {timeout:g} s: "
                "wait for it to finish, or raise --lock-timeout"
            ) from None
    try:
        yield
    finally:
        lock_file.release()
        with contextlib.suppress(OSError):
            (root / f"{name}.lock").unlink()


@dataclass
class Entry:
    """One feature set in the cache as listed: complete ones carry their attributes."""

    id: str
    path: Path
    state: str  # complete | partial | shard | unreadable
    meta: dict
    size_bytes: int

    @property
    def created(self) -> str:
        return self.meta.get("created", "")


def entries(root: Path | None = None) -> list[Entry]:
    root = config.cache_dir(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob(f"*{SUFFIX}")):
        if path.name.startswith("."):
            continue
        meta = peek(path)
        state = "unreadable" if meta is None else ("shard" if "shard_index" in meta else "complete")
        out.append(Entry(path.stem.split(SHARD_MARK)[0] if meta is None else meta["id"], path, state, meta or {}, path.stat().st_size))
    for partial in sorted(root.glob("*.partial")):
        header = Staging.read_header(partial) or {}
        size = sum(p.stat().st_size for p in partial.iterdir() if p.is_file())
        out.append(Entry(header.get("id", partial.stem), partial, "partial", header, size))
    return out


def find(ref: str | os.PathLike, root: Path | None = None) -> Path:
    """A feature-set file from a path, an id or a unique id prefix."""
    path = Path(ref)
    if path.suffix == SUFFIX or path.exists():
        if not path.exists():
            raise CacheError(f"feature set {path} does not exist: see `featcache cache list`")
        return path
    root = config.cache_dir(root)
    ref = str(ref)
    listed = [e for e in entries(root) if e.id.startswith(ref)]  # one pass: each file's attributes read once
    complete = [e for e in listed if e.state == "complete"]
    if len(complete) == 1:
        return complete[0].path
    if len(complete) > 1:
        raise CacheError(f"feature-set id {ref!r} is ambiguous ({', '.join(e.id for e in complete[:4])}): give more characters")
    partial = [e for e in listed if e.state in ("partial", "shard", "unreadable")]
    if partial:
        e = partial[0]
        if e.state == "unreadable":
            raise CacheError(f"feature set {e.id} is corrupted: `featcache cache rm {e.id}` and extract again")
        what = "an interrupted extraction" if e.state == "partial" else "one shard of a sharded extraction"
        fix = "run the same `featcache extract` again to resume it" if e.state == "partial" else "extract every shard, then `featcache cache merge " + e.id + "`"
        raise CacheError(f"feature set {e.id} is incomplete ({what}): {fix}")
    raise CacheError(f"no feature set {ref!r} in {root}: see `featcache cache list`, or run `featcache extract`")


def latest(root: Path | None = None) -> Path:
    listed = entries(root)
    complete = [e for e in listed if e.state == "complete"]
    if not complete:
        root = config.cache_dir(root)
        hint = ""
        if any(e.state == "partial" for e in listed):
            hint = " (an extraction was interrupted: run it again to resume)"
        elif any(e.state == "unreadable" for e in listed):
            bad = next(e for e in listed if e.state == "unreadable")
            hint = f" (feature set {bad.id} is corrupted: `featcache cache rm {bad.id}`)"
        raise CacheError(f"no complete feature set in {root}{hint}: run `featcache extract` first, or pass --cache-dir")
    return max(complete, key=lambda e: (e.created, e.path.stat().st_mtime)).path


def newest_with_config(root: Path, config_id: str, data_root: str) -> Path | None:
    same = [
        e for e in entries(root)
        if e.state == "complete" and e.meta.get("config_id") == config_id and e.meta.get("data_root") == data_root
    ]
    return max(same, key=lambda e: e.created).path if same else None


def known_hashes(root: Path, data_root: str) -> dict[str, tuple[int, int, str]]:
    """``{path: (size, mtime_ns, sha256)}`` recorded by complete feature sets of the folder ``data_root``
    (newest first): a file another backbone's extraction already hashed is not read again."""
    out: dict[str, tuple[int, int, str]] = {}
    same = [e for e in entries(root) if e.state == "complete" and e.meta.get("data_root") == data_root]
    for e in sorted(same, key=lambda e: e.created, reverse=True):
        try:
            with FeatureSet(e.path) as fs:
                m = fs.manifest()
        except (CacheError, OSError, KeyError):
            continue
        for path, size, mtime, digest in zip(m.paths, m.sizes.tolist(), m.mtimes.tolist(), m.content_hashes or []):
            if digest:
                out.setdefault(path, (size, mtime, digest))
    return out


def open_features(ref: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> FeatureSet:
    """Open a feature set by path, id or id prefix; the newest complete one when ``ref`` is None."""
    root = config.cache_dir(cache_dir)
    return FeatureSet(latest(root) if ref is None else find(ref, root))


def remove(ref: str, root: Path | None = None) -> list[Path]:
    root = config.cache_dir(root)
    matches = [e for e in entries(root) if e.id.startswith(ref) or e.path.name == ref]
    ids = {e.id for e in matches}
    if not matches:
        raise CacheError(f"no feature set {ref!r} in {root}: see `featcache cache list`")
    if len(ids) > 1:
        raise CacheError(f"feature-set id {ref!r} is ambiguous ({', '.join(sorted(ids)[:4])}): give more characters")
    removed = []
    for e in matches:
        if e.path.is_dir():
            shutil.rmtree(e.path)
        else:
            e.path.unlink()
        removed.append(e.path)
    return removed


def check(ref: str | None = None, root: Path | None = None) -> dict[Path, list[str]]:
    """Deep-verify one or every feature-set file: {path: problems}."""
    root = config.cache_dir(root)
    targets = [find(ref, root)] if ref else [e.path for e in entries(root) if e.state != "partial"]
    return {p: verify(p) for p in targets}
