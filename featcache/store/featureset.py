"""The feature-set file: one self-describing HDF5 file per feature set (the only module using h5py).

Layout of ``<id>.h5``::

    /features       (rows, *feature_shape) float16|float32, chunked along rows (~1 MiB), fletcher32
    /labels         (rows,) int32, index into /class_names (-1: an unlabelled row)
    /paths          (rows,) relative path of each row's image (bytes: any file name survives)
    /split          (rows,) "train" | "val" | "test" | ""
    /index          (rows,) the row's entry in /manifest
    /view           (rows,) int32, which augmented view of its image the row is (0: the plain crop;
                    with views, an image's rows are consecutive, in view order)
    /class_names    (classes,)
    /manifest/{path,size,mtime_ns,label,split}   every input file, for staleness and incremental updates
    /manifest/sha256 (files,) SHA-256 of each file's bytes ("" unknown): outside the manifest hash and the id
    /skipped/{index,reason}                      files that could not be used, and why
    attributes      model, weights, layer, pool, preprocessing, feature shape, versions, manifest hash,
                    content hash (and its version), creation time, complete=True, ...

A file only ever appears under its final name by ``os.replace`` from a temporary name once every
row and attribute is written, so a file under a final name is complete; ``complete`` is checked too.

Opening a file checks its structure (no rows read) and parses its attributes into ``info``
(featcache/store/info.py); every reader of rows then goes through ``integrity.check``.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from featcache.core.errors import CacheError, FeatcacheError
from featcache.core.machine import usable_cores
from featcache.core.text import display
from featcache.store import memo
from featcache.store.digest import CONTENT_HASH_VERSION, ContentDigest
from featcache.store.h5 import damaged, read_attrs, reason, text, write_attrs
from featcache.store.info import FeatureSetInfo
from featcache.store.manifest import Manifest
from featcache.store.staging import Staging, disk_full_error, is_disk_full

CHUNK_BYTES = 1 << 20  # HDF5's default chunk cache is 1 MiB per dataset
# gzip level 1 + shuffle, chosen by bench/hdf5_io.py (bench/RESULTS.md) on real EfficientNet-Lite0
# features over lzf: files 15-19% smaller for every kind measured (1280x7x7 float16: 8.0 vs 9.5 MB
# for 398 images, 6.2x vs 5.3x compression), full reads 0.8-1.2x lzf's speed (float16 maps, the
# default: 416 vs 350 MB/s), writes 0.5-0.8x (paid once, <1% of extraction time). gzip is in every
# HDF5 build (lzf only in h5py), so any HDF5 reader opens the file. "none" reads ~4-5x faster but
# makes map files ~5x larger.
COMPRESSION = "gzip"
COMPRESSION_OPTS = 1
_BYTES = h5py.vlen_dtype(bytes)
_STR = h5py.string_dtype("utf-8")


_REQUIRED = ("features", "labels", "paths", "split", "index", "class_names", "manifest/path", "manifest/size",
             "manifest/mtime_ns", "manifest/label", "manifest/split", "skipped/index", "skipped/reason")
_ROW_ALIGNED = ("labels", "paths", "split", "index", "view")


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (H5_checksum_fletcher32): big-endian 16-bit words, sums folded mod 65535 but
    kept in 1..65535 once anything non-zero was added. In closed form, so NumPy does the loop."""
    b = np.frombuffer(data, np.uint8)
    if len(b) % 2:  # an odd last byte counts as the high byte of a last word
        b = np.concatenate([b, np.zeros(1, np.uint8)])
    words = (b[0::2].astype(np.int64) << 8) | b[1::2].astype(np.int64)
    if not words.any():
        return 0
    fold = lambda x: (int(x) - 1) % 65535 + 1  # noqa: E731
    sum1 = fold(words.sum())
    sum2 = fold((words * np.arange(len(words), 0, -1, dtype=np.int64)).sum())
    return (sum2 << 16) | sum1


def encode_chunk(chunk: np.ndarray) -> bytes:
    """One chunk through the dataset's filter pipeline, shuffle -> deflate -> fletcher32, byte for byte
    what HDF5 writes (tested against ``read_direct_chunk``). zlib releases the GIL, so chunks encode in
    parallel threads; HDF5 itself runs its filters on one thread."""
    raw = np.ascontiguousarray(chunk)
    shuffled = raw.view(np.uint8).reshape(-1, raw.dtype.itemsize).T.tobytes()
    compressed = zlib.compress(shuffled, COMPRESSION_OPTS)
    return compressed + fletcher32(compressed).to_bytes(4, "little")


class _ChunkWriter:
    """Cuts row blocks into whole chunks, encodes them on a thread pool, writes them in order."""

    def __init__(self, dataset: h5py.Dataset, rows: int, threads: int):
        self.ds, self.rows = dataset, rows
        self.shape, self.dtype = dataset.shape[1:], dataset.dtype
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="featcache-chunks")
        self.window = 2 * max(1, threads)
        self.pending: list = []  # (row offset, future) in order
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.at = 0

    def add(self, block: np.ndarray) -> None:
        self.buffer.append(block)
        self.buffered += len(block)
        while self.buffered >= self.rows:
            data = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
            self._submit(data[:self.rows])
            rest = data[self.rows:]
            self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        try:
            if self.buffered:  # HDF5 stores an edge chunk at full size, padded with the fill value (0)
                chunk = np.zeros((self.rows,) + self.shape, dtype=self.dtype)
                chunk[:self.buffered] = np.concatenate(self.buffer)
                self._submit(chunk)
            while self.pending:
                self._write_oldest()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, chunk: np.ndarray) -> None:
        self.pending.append((self.at, self.pool.submit(encode_chunk, chunk)))
        self.at += self.rows
        while len(self.pending) > self.window:
            self._write_oldest()

    def _write_oldest(self) -> None:
        offset, future = self.pending.pop(0)
        self.ds.id.write_direct_chunk((offset,) + (0,) * len(self.shape), future.result())


def chunk_rows(feature_shape: tuple[int, ...], dtype: str, n_rows: int) -> int:
    row_bytes = int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, min(n_rows, round(CHUNK_BYTES / max(row_bytes, 1)))))


def write_feature_set(
    path: Path,
    attrs: dict,
    manifest: Manifest,
    rows_source: Staging,
    feature_shape: tuple[int, ...],
    dtype: str,
) -> str:
    """Write rows into ``path`` atomically; returns the content hash.

    ``rows_source`` is anything with ``n_rows()``, ``skipped()`` and ``rows_in_order(block_rows)``:
    a ``Staging`` directory, or the shards being merged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n_rows = rows_source.n_rows()
    skipped = rows_source.skipped()
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            rows = chunk_rows(feature_shape, dtype, n_rows)
            feats = f.create_dataset(
                "features",
                shape=(n_rows,) + tuple(feature_shape),
                dtype=dtype,
                chunks=(rows,) + tuple(feature_shape) if n_rows else None,
                compression=COMPRESSION if n_rows else None,
                compression_opts=COMPRESSION_OPTS if n_rows else None,
                shuffle=bool(n_rows),
                fletcher32=bool(n_rows),
            )
            digest = ContentDigest()
            index = np.empty(n_rows, dtype=np.int64)
            at = 0
            writer = _ChunkWriter(feats, rows, usable_cores()) if n_rows else None
            try:
                for idx, block in rows_source.rows_in_order(block_rows=rows * 8):
                    block = np.ascontiguousarray(block, dtype=dtype)
                    writer.add(block)
                    digest.features(block)
                    index[at:at + len(idx)] = idx
                    at += len(idx)
            except BaseException:
                writer.pool.shutdown(wait=False, cancel_futures=True)
                raise
            if writer is not None:
                writer.close()
            _write_index(f, manifest, index, skipped)
            write_attrs(f, {**attrs, "content_hash_version": CONTENT_HASH_VERSION, "n_rows": n_rows, "n_skipped": len(skipped)})
            content = digest.finish(f)
            f.attrs["content_sha256"] = content
            f.attrs["complete"] = True
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # h5py reports failed writes as either
        tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(err, path.parent, "the feature set") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return content


def _write_index(f: h5py.File, manifest: Manifest, index: np.ndarray, skipped: dict[int, str]) -> None:
    """Everything beside the features: each row's label, entry, view, path and split; the classes; the whole
    manifest; the skipped files and why."""
    f.create_dataset("labels", data=manifest.labels[index].astype(np.int32))
    f.create_dataset("index", data=index)
    f.create_dataset("view", data=view_numbers(index))
    f.create_dataset("paths", data=np.array([os.fsencode(manifest.paths[i]) for i in index], dtype=object), dtype=_BYTES)
    f.create_dataset("split", data=np.array([manifest.splits[i] for i in index], dtype=object), dtype=_STR)
    f.create_dataset("class_names", data=np.array(manifest.class_names, dtype=object), dtype=_STR)
    m = f.create_group("manifest")
    m.create_dataset("path", data=np.array([os.fsencode(p) for p in manifest.paths], dtype=object), dtype=_BYTES)
    m.create_dataset("size", data=manifest.sizes)
    m.create_dataset("mtime_ns", data=manifest.mtimes)
    m.create_dataset("label", data=manifest.labels)
    m.create_dataset("split", data=np.array(manifest.splits, dtype=object), dtype=_STR)
    if manifest.content_hashes is not None:
        m.create_dataset("sha256", data=np.array(manifest.content_hashes, dtype="S64"))
    s = f.create_group("skipped")
    s.create_dataset("index", data=np.array(sorted(skipped), dtype=np.int64))
    s.create_dataset("reason", data=np.array([skipped[i] for i in sorted(skipped)], dtype=object), dtype=_STR)


def view_numbers(index: np.ndarray) -> np.ndarray:
    """Each row's place among the consecutive rows of its image: 0, 1, ... (all 0 without views)."""
    n = len(index)
    if not n:
        return np.zeros(0, dtype=np.int32)
    starts = np.concatenate([[True], index[1:] != index[:-1]])
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return (np.arange(n) - first).astype(np.int32)


def write_isolated(*args) -> str:
    """``write_feature_set`` in a forked child process.

    When a write fails mid-file (disk full), the HDF5 library can leave its state broken and crash
    the process at exit. Writing from a child keeps the extracting process alive, so the user gets
    a one-line message and the staged rows stay resumable.
    """
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child():
        # Errors travel through the pipe; after a failed write h5py prints "Exception ignored"
        # tracebacks from its finalizers, which must not reach the user's terminal.
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 2)
        try:
            send.send(("ok", write_feature_set(*args)))
        except CacheError as err:
            send.send(("cache", str(err)))
        except BaseException as err:  # reported by the parent; the child must not run h5py's exit hooks
            send.send(("error", f"{type(err).__name__}: {err}"))
        finally:
            send.close()
            os._exit(0)

    process = ctx.Process(target=child, daemon=False)
    process.start()
    send.close()
    try:
        kind, value = receive.recv()
    except EOFError:
        kind, value = "crash", None
    process.join()
    path = Path(args[0])
    for stray in path.parent.glob(f".{path.name}.tmp-*"):
        stray.unlink(missing_ok=True)
    if kind == "ok":
        memo.remember(path, memo.stamp(path), value)  # hashed as written: its first reader need not hash it again
        return value
    if kind == "cache":
        raise CacheError(value)
    if kind == "crash" or is_disk_full(Exception(value)):
        raise CacheError(
            f"writing feature set {path.name} failed (disk full or I/O error: {value or f'exit code {process.exitcode}'}): "
            "free space (or choose --cache-dir), then run the same command again to resume; the rows written so far are kept"
        )
    raise RuntimeError(value)


class FeatureSet:
    """A complete feature set opened for reading; mapping-like, a context manager.

    ``features`` is the lazy h5py dataset (slice it); ``load()`` reads everything into memory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise CacheError(f"{display(str(self.path))} is a folder, not a feature set: give a feature-set id from "
                             "`featcache cache list`, or the path of its .h5 file")
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise CacheError(f"feature set {display(str(self.path))} does not exist: run `featcache extract` or pick one from `featcache cache list`") from None
        except PermissionError as err:
            raise CacheError(f"feature set {display(str(self.path))} cannot be read ({err.strerror}): ask its owner "
                             "for read access, or extract into a cache dir of your own (--cache-dir)") from None
        except OSError as err:
            if "file locking" in reason(err):
                raise CacheError(f"feature set {display(str(self.path))} cannot be opened: {reason(err)}") from None
            raise damaged(self.path, f"unreadable or corrupted: {reason(err)}") from None
        try:
            if not self._file.attrs.get("complete", False) or "features" not in self._file:
                raise CacheError(f"feature set {display(str(self.path))} is incomplete: run the same `featcache extract` again to finish it")
            self.meta = read_attrs(self._file)  # the attributes as recorded (``info`` is their typed record)
            found = _structure(self._file, self.meta)
            if found:
                raise damaged(self.path, found[0])
            try:
                self.info = FeatureSetInfo.from_attrs(self.meta)
            except (ValueError, TypeError, KeyError, FeatcacheError) as err:
                raise damaged(self.path, f"attributes that do not parse ({str(err).splitlines()[0][:100]})") from None
        except BaseException:
            self._file.close()
            raise

    # -- mapping-like access ---------------------------------------------------------------------
    def __getitem__(self, name: str):
        return self._file[name]

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def __enter__(self) -> "FeatureSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __repr__(self) -> str:
        return f"<FeatureSet {self.id} {self.info.extractor.label} {len(self)}x{self.feature_shape}>"

    def __len__(self) -> int:
        return int(self._file["features"].shape[0])

    # -- contents --------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.info.id

    @property
    def features(self) -> h5py.Dataset:
        return self._file["features"]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self._file["features"].shape[1:])

    @property
    def labels(self) -> np.ndarray:
        return self._file["labels"][()]

    @property
    def class_names(self) -> list[str]:
        return [text(v) for v in self._file["class_names"][()]]

    @property
    def paths(self) -> list[str]:
        return [os.fsdecode(v) for v in self._file["paths"][()]]

    @property
    def split(self) -> np.ndarray:
        return np.array([text(v) for v in self._file["split"][()]], dtype=object)

    @property
    def index(self) -> np.ndarray:
        return self._file["index"][()]

    @property
    def view(self) -> np.ndarray:
        """Each row's view number (files written before views existed: all 0)."""
        if "view" in self._file:
            return self._file["view"][()]
        return np.zeros(len(self), dtype=np.int32)

    @property
    def n_views(self) -> int:
        """Rows per image."""
        return self.info.views.count

    @property
    def skipped(self) -> list[tuple[str, str]]:
        m = [os.fsdecode(v) for v in self._file["manifest/path"][()]]
        idx = self._file["skipped/index"][()]
        reasons = [text(v) for v in self._file["skipped/reason"][()]]
        return [(m[i], r) for i, r in zip(idx.tolist(), reasons)]

    def manifest_signatures(self) -> dict[str, tuple[int, int]]:
        m = self._file["manifest"]
        paths = [os.fsdecode(v) for v in m["path"][()]]
        return dict(zip(paths, zip(m["size"][()].tolist(), m["mtime_ns"][()].tolist())))

    def manifest(self) -> Manifest:
        """Every input file the set was made from, skipped ones included (with the content hashes
        recorded at extraction; ``content_hashes`` is None for sets made before they were)."""
        m = self._file["manifest"]
        return Manifest(
            root=Path(self.info.data_root or "."),
            paths=[os.fsdecode(v) for v in m["path"][()]],
            sizes=m["size"][()],
            mtimes=m["mtime_ns"][()],
            labels=m["label"][()],
            splits=[text(v) for v in m["split"][()]],
            class_names=self.class_names,
            labels_file=self.info.labels_file,
            content_hashes=[text(v) for v in m["sha256"][()]] if "sha256" in m else None,
        )

    def load(self, dtype=None) -> np.ndarray:
        """All features in memory (contiguous read: far faster than h5py fancy indexing)."""
        try:
            data = self._file["features"][()]
        except OSError as err:  # a damaged chunk fails its fletcher32 checksum
            raise damaged(self.path, f"unreadable rows: {reason(err)}") from None
        return data.astype(dtype, copy=False) if dtype is not None else data

    def iter_blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        ds = self._file["features"]
        step = rows or (ds.chunks[0] if ds.chunks else max(len(self), 1))
        for start in range(0, len(self), step):
            try:
                block = ds[start:start + step]
            except OSError as err:
                raise damaged(self.path, f"unreadable rows from {start}: {reason(err)}") from None
            yield start, block


def peek(path: Path) -> dict | None:
    """Attributes of a feature-set file, or None when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return read_attrs(f)
    except (OSError, ValueError, CacheError):
        return None


def _structure(f: h5py.File, meta: dict) -> list[str]:
    """Cheap checks on every open (no rows read): every dataset present, row-aligned ones as long as /features."""
    version = meta.get("content_hash_version", 1)
    wanted = _REQUIRED + (("view",) if version != 1 else ())
    missing = [name for name in wanted if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        return [f"/{', /'.join(missing)} missing"]
    if not isinstance(meta.get("id"), str) or not meta["id"]:
        return ["no id attribute"]
    features = f["features"]
    if features.ndim < 1:
        return ["/features has no rows dimension"]
    n, out = features.shape[0], []
    for name in _ROW_ALIGNED:
        if name in f and f[name].shape != (n,):
            out.append(f"/{name} has shape {f[name].shape}, /features has {n} rows")
    files = f["manifest/path"].shape
    for name in ("size", "mtime_ns", "label", "split", "sha256"):
        if f"manifest/{name}" in f and f[f"manifest/{name}"].shape != files:
            out.append(f"/manifest/{name} has shape {f[f'manifest/{name}'].shape}, /manifest/path {files}")
    if f["skipped/index"].shape != f["skipped/reason"].shape:
        out.append("/skipped/index and /skipped/reason differ in length")
    if meta.get("n_rows", n) != n:
        out.append(f"n_rows says {meta.get('n_rows')}, /features has {n} rows")
    return out


