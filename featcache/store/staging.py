"""Crash-safe staging of extracted rows: what makes ``kill -9`` cost at most one batch.

An extraction in progress is a directory ``<name>.partial/`` beside the cache files. Each batch is
committed as a segment: its features in ``seg-N.npy`` and, written last, ``seg-N.json`` holding the
manifest entries it covers and any skipped files. Both are written to a temporary name and moved
into place, so a segment either exists whole or not at all. Resuming reads the committed segments
and extracts only what they lack; assembling reads them in manifest order into one HDF5 file
(``store.write_feature_set``). Nothing here is the final cache entry, so nothing here can be taken
for a complete feature set.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from featcache.core.errors import CacheError
from featcache.core.files import atomic_write, save_npy

HEADER = "staging.json"
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}



def is_disk_full(err: Exception) -> bool:
    """ENOSPC/EDQUOT/EFBIG, or a short write that numpy or HDF5 reports without an errno."""
    text = str(err)
    return getattr(err, "errno", None) in DISK_FULL or any(
        t in text for t in ("No space left", "File too large", "write failed", "requested and")
    )


def disk_full_error(err: Exception, where: Path, what: str) -> CacheError:
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:80]
    return CacheError(
        f"disk full while writing {what} in {where} ({reason}): free space (or choose --cache-dir), "
        "then run the same command again to resume; the rows written so far are kept"
    )


class Staging:
    """Committed batches of one extraction. With ``header["views"] = V`` every committed image has V
    consecutive feature rows (its views, in order); ``indices`` name images, never views."""

    def __init__(self, directory: Path, header: dict):
        self.dir = Path(directory)
        self.header = header
        self.views = int(header.get("views", 1))
        self._segments: list[dict] | None = None
        self.dropped: list[str] = []  # damaged batches found on resuming: why each was dropped

    # -- life cycle ------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, header: dict) -> "Staging":
        """Resume a staging directory with the same header, or start a new one."""
        directory = Path(directory)
        existing = directory / HEADER
        if existing.is_file():
            try:
                old = json.loads(existing.read_text())
            except ValueError:
                old = None
            if old == header:
                staging = cls(directory, header)
                try:
                    staging._drop_orphans()
                    staging._drop_damaged()
                except OSError as err:
                    raise CacheError(
                        f"the interrupted extraction in {directory} cannot be read ({err.strerror or err}): remove it with "
                        f"`featcache cache rm {directory.name}` and run the same command again"
                    ) from None
                return staging
            shutil.rmtree(directory, ignore_errors=True)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(directory / HEADER, json.dumps(header, sort_keys=True))
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(err, directory.parent, "the staging header") from None
            raise
        return cls(directory, header)

    @staticmethod
    def read_header(directory: Path) -> dict | None:
        try:
            return json.loads((Path(directory) / HEADER).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _drop_orphans(self) -> None:
        """Delete feature files whose commit record never landed (killed between the two writes)."""
        committed = {p.stem for p in self.dir.glob("seg-*.json")}
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp") or (p.suffix == ".npy" and p.stem not in committed):
                p.unlink(missing_ok=True)

    def _drop_damaged(self) -> None:
        """Drop committed batches that cannot be used as they are (a record that is not the JSON we write,
        a feature file missing, short, of another shape or dtype, images outside this run's range or
        already in another batch): their images count as not done and are extracted again."""
        lo, hi = self.header.get("entries", (0, float("inf")))
        shape = tuple(self.header.get("feature_shape", ()))
        dtype = self.header.get("dtype")
        kept: list[dict] = []
        done: set[int] = set()
        for p in sorted(self.dir.glob("seg-*.json")):
            try:
                record = json.loads(p.read_text())
                indices = [int(i) for i in record["indices"]]
                skipped = [(int(i), str(r)) for i, r in record["skipped"]]
                mine = indices + [i for i, _ in skipped]
                if any(not lo <= i < hi for i in mine) or len(set(mine)) < len(mine) or done.intersection(mine):
                    raise ValueError("images outside this extraction or in another batch")
                if indices:
                    rows = np.load(self.dir / f"{p.stem}.npy", mmap_mode="r", allow_pickle=False)
                    if rows.shape[0] != len(indices) * self.views or (shape and rows.shape[1:] != shape) \
                            or (dtype and rows.dtype != np.dtype(dtype)):
                        raise ValueError(f"features of shape {rows.shape} {rows.dtype} for {len(indices)} images")
            except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
                self.dropped.append(f"{p.stem}: {type(err).__name__}: {str(err)[:80]}")
                (self.dir / f"{p.stem}.npy").unlink(missing_ok=True)
                p.unlink(missing_ok=True)
                continue
            done.update(mine)
            kept.append({"stem": p.stem, "indices": indices, "skipped": [[i, r] for i, r in skipped]})
        self._segments = kept

    # -- writing ---------------------------------------------------------------------------------
    def commit(self, indices: np.ndarray, features: np.ndarray | None, skipped: list[tuple[int, str]]) -> None:
        """``features``: ``views`` rows per entry of ``indices``, an image's views consecutive."""
        segments = self.segments()
        number = int(segments[-1]["stem"][4:]) + 1 if segments else 0  # after a dropped batch, still a new name
        stem = f"seg-{number:07d}"
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and len(features) != len(indices) * self.views:
            raise ValueError(f"{len(features)} feature rows for {len(indices)} images of {self.views} views")
        try:
            if len(indices):
                save_npy(self.dir / f"{stem}.npy", features)
            record = {"indices": indices.tolist(), "skipped": [[int(i), r] for i, r in skipped]}
            atomic_write(self.dir / f"{stem}.json", json.dumps(record))
        except OSError as err:
            (self.dir / f"{stem}.npy").unlink(missing_ok=True)  # a feature file whose record never landed
            if is_disk_full(err):
                raise disk_full_error(err, self.dir.parent, "extracted features") from None
            raise
        self._segments.append({"stem": stem, **record})

    # -- reading ---------------------------------------------------------------------------------
    def segments(self) -> list[dict]:
        if self._segments is None:
            self._segments = []
            for p in sorted(self.dir.glob("seg-*.json")):
                try:
                    record = json.loads(p.read_text())
                except (OSError, ValueError) as err:
                    raise CacheError(f"batch {p.name} of the extraction in {self.dir} is unreadable ({err}): run the same "
                                     f"command again (it drops damaged batches), or `featcache cache rm {self.dir.name}`") from None
                self._segments.append({"stem": p.stem, **record})
        return self._segments

    def covered(self) -> set[int]:
        """Manifest entries already done: extracted or skipped."""
        done: set[int] = set()
        for seg in self.segments():
            done.update(seg["indices"])
            done.update(i for i, _ in seg["skipped"])
        return done

    def skipped(self) -> dict[int, str]:
        return {i: r for seg in self.segments() for i, r in seg["skipped"]}

    def n_images(self) -> int:
        return sum(len(seg["indices"]) for seg in self.segments())

    def n_rows(self) -> int:
        return self.n_images() * self.views

    def rows_in_order(self, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(entry index per row, features) blocks in manifest order, then view order, reading
        segments memory-mapped."""
        segs = [s for s in self.segments() if s["indices"]]
        if not segs:
            return
        index = np.concatenate([np.asarray(s["indices"], dtype=np.int64) for s in segs])
        seg_of = np.concatenate([np.full(len(s["indices"]), k, dtype=np.int64) for k, s in enumerate(segs)])
        pos_of = np.concatenate([np.arange(len(s["indices"]), dtype=np.int64) for s in segs])
        order = np.argsort(index, kind="stable")
        if np.any(np.diff(index[order]) == 0):
            raise CacheError(f"the interrupted extraction in {self.dir} holds the same image twice: "
                             f"`featcache cache rm {self.dir.name}` and run the same command again")
        maps: dict[int, np.ndarray] = {}
        v = self.views
        for start in range(0, len(order), max(1, block_rows // v)):
            sel = order[start:start + max(1, block_rows // v)]
            block = None
            for k in np.unique(seg_of[sel]):
                if k not in maps:
                    maps[k] = np.load(self.dir / f"{segs[k]['stem']}.npy", mmap_mode="r", allow_pickle=False)
                mine = seg_of[sel] == k
                # an image's rows in its segment: pos * v .. pos * v + v - 1
                rows = maps[k][(pos_of[sel][mine][:, None] * v + np.arange(v)).ravel()]
                if block is None:
                    block = np.empty((len(sel) * v,) + rows.shape[1:], dtype=rows.dtype)
                block[np.repeat(mine, v)] = rows
            yield np.repeat(index[sel], v), block
