"""The cache directory: finding, listing, locking, verifying, removing and merging feature sets."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from featcache.core import paths, progress
from featcache.core.errors import CacheError, FeatcacheError
from featcache.store.featureset import FeatureSet, peek
from featcache.store.h5 import SUFFIX
from featcache.store.info import FeatureSetInfo, header_label
from featcache.store.integrity import open_verified, verify
from featcache.store.staging import Staging

SHARD_MARK = ".shard-"
# An id prefix needs this many characters: an unset shell variable ("") or a stray letter would
# otherwise name every feature set, and `cache rm` would delete them.
MIN_PREFIX = 4


def file_stem(fsid: str, shard: tuple[int, int] | None = None) -> str:
    return f"{fsid}{SHARD_MARK}{shard[0]}-of-{shard[1]}" if shard else fsid


def _shown(ref: str) -> str:
    """User text in a message: quoted, escaped (repr: control characters too), and short."""
    text = repr(ref)
    return text if len(text) <= 60 else text[:56] + "...'"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
        return False


def _lock_holder(lock_file: Path) -> int | None:
    """The pid holding a lock file's flock, from /proc/locks (Linux); None where that cannot be told."""
    try:
        st = lock_file.stat()
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


@contextlib.contextmanager
def lock(root: Path, name: str, timeout: float = -1, say: bool = True):
    """One writer per feature set; a second process waits (or stops after ``timeout`` seconds)."""
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
    """One feature set in the cache as listed: a complete one or a shard carries its record (``info``), an
    interrupted extraction its staging header."""

    id: str
    path: Path
    state: str  # complete | partial | shard | unreadable
    info: FeatureSetInfo | None
    size_bytes: int
    header: dict | None = None  # an interrupted extraction's staging header

    @property
    def created(self) -> str:
        return self.info.made.created if self.info else ""

    def to_record(self) -> dict:
        """What ``featcache cache list`` shows of it (as JSON, or as a table row)."""
        if self.info is not None:
            i = self.info
            shown = {"model": i.model, "layer": i.layer, "pool": i.pool, "feature_shape": list(i.feature_shape)}
        else:
            shown = header_label(self.header or {})  # all an interrupted extraction's header knows
        return {"id": self.id, "state": self.state, "path": str(self.path), "size_bytes": self.size_bytes, **shown,
                "rows": self.info.n_rows if self.info else None, "created": self.created}


def _parsed(path: Path) -> FeatureSetInfo | None:
    """A file's record from its attributes alone (no structure check), or None when they cannot be read."""
    attrs = peek(path)
    try:
        return None if attrs is None else FeatureSetInfo.from_attrs(attrs)
    except (ValueError, TypeError, KeyError, FeatcacheError):
        return None


def entries(root: Path | None = None) -> list[Entry]:
    root = paths.cache_dir(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob(f"*{SUFFIX}")):
        if path.name.startswith("."):
            continue
        info = _parsed(path)
        state = "unreadable" if info is None else ("shard" if info.shard else "complete")
        out.append(Entry(path.stem.split(SHARD_MARK)[0] if info is None else info.id, path, state, info, path.stat().st_size))
    for partial in sorted(root.glob("*.partial")):
        header = Staging.read_header(partial) or {}
        size = sum(p.stat().st_size for p in partial.iterdir() if p.is_file())
        out.append(Entry(header.get("id", partial.stem), partial, "partial", None, size, header))
    return out


def _named(ref: str, listed: list[Entry]) -> list[Entry]:
    """The entries ``ref`` names: by file name (``ID.h5``, ``ID.partial``, a shard's file), by the path
    of one, or by id or an id prefix of at least MIN_PREFIX characters. Anything shorter is refused."""
    if not ref.strip():
        raise CacheError("empty feature-set id (an unset shell variable?): give an id or a unique prefix of at least "
                         f"{MIN_PREFIX} characters from `featcache cache list`, or the path of a feature-set file")
    by_name = [e for e in listed if ref in (e.path.name, str(e.path))]
    if not by_name and (os.sep in ref or ref.endswith(SUFFIX)) and _exists(Path(ref)):
        where = os.path.realpath(ref)
        by_name = [e for e in listed if os.path.realpath(e.path) == where]
    if by_name:
        return by_name
    if len(ref) < MIN_PREFIX:
        raise CacheError(f"feature-set id {_shown(ref)} is too short: give at least {MIN_PREFIX} characters of an id "
                         "from `featcache cache list` (or the whole id)")
    return [e for e in listed if e.id.startswith(ref)]


def find(ref: str | os.PathLike, root: Path | None = None) -> Path:
    """A complete feature-set file from a path, an id or a unique id prefix (``_named``)."""
    text = os.fsdecode(ref) if isinstance(ref, bytes) else os.fspath(ref)
    root = paths.cache_dir(root)
    path = Path(text) if text.strip() else None
    if path is not None and (path.suffix == SUFFIX or _exists(path)):
        if not _exists(path) and _exists(root / path) and path.name == text:
            path = root / path  # a file name from the cache, as `cache list --json` shows it
        if path.is_dir():
            raise CacheError(f"{_shown(text)} is a folder, not a feature set: give a feature-set id from "
                             "`featcache cache list`, or the path of its .h5 file")
        if not _exists(path):
            raise CacheError(f"feature set {_shown(text)} does not exist: see `featcache cache list`")
        return path
    listed = _named(text, entries(root))  # one pass: each file's attributes read once
    complete = [e for e in listed if e.state == "complete"]
    if len(complete) == 1:
        return complete[0].path
    if len(complete) > 1:
        raise CacheError(f"feature-set id {_shown(text)} is ambiguous ({', '.join(e.id for e in complete[:4])}): give more characters")
    partial = [e for e in listed if e.state in ("partial", "shard", "unreadable")]
    if partial:
        e = partial[0]
        if e.state == "unreadable":
            raise CacheError(f"feature set {e.id} is corrupted (`featcache cache verify {e.id}` says how): "
                             f"`featcache cache rm {e.id}` and run `featcache extract` again (the same extract command also replaces it)")
        what = "an interrupted extraction" if e.state == "partial" else "one shard of a sharded extraction"
        fix = "run the same `featcache extract` again to resume it" if e.state == "partial" else "extract every shard, then `featcache cache merge " + e.id + "`"
        raise CacheError(f"feature set {e.id} is incomplete ({what}): {fix}")
    raise CacheError(f"no feature set {_shown(text)} in {root}: see `featcache cache list`, or run `featcache extract`")


def latest(root: Path | None = None) -> Path:
    listed = entries(root)
    complete = [e for e in listed if e.state == "complete"]
    if not complete:
        root = paths.cache_dir(root)
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
        if e.state == "complete" and e.info.config_id == config_id and e.info.data_root == data_root
    ]
    return max(same, key=lambda e: e.created).path if same else None


def known_hashes(root: Path, data_root: str) -> dict[str, tuple[int, int, str]]:
    """``{path: (size, mtime_ns, sha256)}`` recorded by complete feature sets of the folder ``data_root``
    (newest first): a file another backbone's extraction already hashed is not read again."""
    out: dict[str, tuple[int, int, str]] = {}
    same = [e for e in entries(root) if e.state == "complete" and e.info.data_root == data_root]
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


def open_features(ref: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  verify: bool = True) -> FeatureSet:
    """Open a feature set by path, id or id prefix; the newest complete one when ``ref`` is None.
    ``verify``: pass the integrity check readers of rows need (False: attributes and structure only)."""
    root = paths.cache_dir(cache_dir)
    path = latest(root) if ref is None else find(ref, root)
    return open_verified(path) if verify else FeatureSet(path)


def remove(ref: str, root: Path | None = None) -> list[Path]:
    """Delete every file of the one feature set ``ref`` names (``_named``): complete, partial, shards.
    Refused while an extraction of it holds its lock, and when ``ref`` names several sets or none."""
    root = paths.cache_dir(root)
    text = os.fsdecode(ref) if isinstance(ref, bytes) else os.fspath(ref)
    matches = _named(text, entries(root))
    ids = {e.id for e in matches}
    if not matches:
        raise CacheError(f"no feature set {_shown(text)} in {root}: see `featcache cache list`")
    if len(ids) > 1:
        raise CacheError(f"feature-set id {_shown(text)} is ambiguous ({', '.join(sorted(ids)[:4])}): give more characters")
    names = {e.path.name.removesuffix(SUFFIX).removesuffix(".partial") for e in matches} | ids
    removed = []
    with _unlocked(root, sorted(names)):
        for e in matches:
            try:
                if e.path.is_dir():
                    shutil.rmtree(e.path)
                else:
                    e.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise CacheError(
                    f"cannot remove {e.path} ({err.strerror or err}): the cache dir {root} is not writable for you; "
                    f"make it writable (or ask its owner), then run `featcache cache rm {e.id}` again"
                    + (f" ({len(removed)} file(s) of it already removed)" if removed else "")
                ) from None
            removed.append(e.path)
    return removed


@contextlib.contextmanager
def _unlocked(root: Path, names: list[str]):
    """Hold the extraction locks of ``names`` (as ``lock`` takes them) while files are deleted; refuse at
    once if a writer holds one: deleting under it lost its work and crashed it."""
    held = []
    try:
        for name in names:
            lock_file = FileLock(str(root / f"{name}.lock"))
            try:
                lock_file.acquire(timeout=0)
            except Timeout:
                pid = _lock_holder(root / f"{name}.lock")
                raise CacheError(
                    f"feature set {name} is being extracted by another featcache process{f' (pid {pid})' if pid else ''}: "
                    "wait for it to finish or stop it, then run `featcache cache rm` again"
                ) from None
            except OSError as err:
                raise CacheError(
                    f"cannot remove feature set {name}: the cache dir {root} is not writable for you ({err.strerror or err}); "
                    "make it writable (or ask its owner), then run `featcache cache rm` again"
                ) from None
            held.append((lock_file, name))
        yield
    finally:
        for lock_file, name in reversed(held):
            lock_file.release()
            with contextlib.suppress(OSError):
                (root / f"{name}.lock").unlink()


def check(ref: str | None = None, root: Path | None = None) -> dict[Path, list[str]]:
    """Deep-verify one or every feature-set file: {path: problems}."""
    root = paths.cache_dir(root)
    if not ref:
        targets = [e.path for e in entries(root) if e.state != "partial"]
    else:
        try:
            targets = [find(ref, root)]
        except CacheError:  # a file that cannot even be opened is what verify is for
            targets = [e.path for e in _named(os.fspath(ref), entries(root)) if e.state == "unreadable"][:1]
            if not targets:
                raise
    return {p: verify(p) for p in targets}
