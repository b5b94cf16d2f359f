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

Every reader of rows goes through ``check`` (``open_verified``): the structure, the content hash and
the rows' agreement with the manifest, verified once per state of the file and remembered (``_memo_*``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from featcache.core.errors import CacheError, DamagedError
from featcache.core.files import atomic_write
from featcache.core.machine import usable_cores
from featcache.core.paths import user_cache_dir
from featcache.core.text import display
from featcache.store.fingerprint import ID_LENGTH, feature_set_id
from featcache.store.manifest import Manifest
from featcache.store.staging import Staging, disk_full_error, is_disk_full

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # HDF5's default chunk cache is 1 MiB per dataset
# gzip level 1 + shuffle, chosen by bench/hdf5_io.py (bench/RESULTS.md) on real EfficientNet-Lite0
# features over lzf: files 15-19% smaller for every kind measured (1280x7x7 float16: 8.0 vs 9.5 MB
# for 398 images, 6.2x vs 5.3x compression), full reads 0.8-1.2x lzf's speed (float16 maps, the
# default: 416 vs 350 MB/s), writes 0.5-0.8x (paid once, <1% of extraction time). gzip is in every
# HDF5 build (lzf only in h5py), so any HDF5 reader opens the file. "none" reads ~4-5x faster but
# makes map files ~5x larger.
COMPRESSION = "gzip"
COMPRESSION_OPTS = 1
SUFFIX = ".h5"
_BYTES = h5py.vlen_dtype(bytes)
_STR = h5py.string_dtype("utf-8")
_JSON_ATTRS = ("preprocess", "decode", "versions", "key", "extract_args", "data_root", "feature_shape")


# What the content hash covers, by the file's ``content_hash_version`` attribute (absent: 1).
#   1: the feature bytes in row order, then each row's label and manifest index.
#   2: all of 1, then every other dataset and attribute that can change a result (_HASHED below).
# Files keep the version they were written with (and so their ids and cache hits); ``verify`` adds
# structural and cross checks that hold for both (see ``problems``).
CONTENT_HASH_VERSION = 2
_HASHED = ("view", "paths", "split", "class_names", "manifest/path", "manifest/size", "manifest/mtime_ns", "manifest/label",
           "manifest/split", "manifest/sha256", "skipped/index", "skipped/reason")
_HASHED_ATTRS = ("id", "key", "n_views", "manifest_sha256")
_REQUIRED = ("features", "labels", "paths", "split", "index", "class_names", "manifest/path", "manifest/size",
             "manifest/mtime_ns", "manifest/label", "manifest/split", "skipped/index", "skipped/reason")
_ROW_ALIGNED = ("labels", "paths", "split", "index", "view")


class ContentDigest:
    """The content hash recorded at extraction. Written, verified and checked before any reader uses the
    rows by this one class, so they can never disagree about what "altered" means. Everything but the
    feature bytes is read back from the file itself, by the writer as by the verifier."""

    def __init__(self, version: int = CONTENT_HASH_VERSION):
        if version not in (1, 2):
            raise CacheError(f"content hash version {version!r} is unknown to this featcache"
                             + (": upgrade featcache" if isinstance(version, int) and version > 2 else ""))
        self.version = version
        self._digest = hashlib.sha256()

    def features(self, block: np.ndarray) -> "ContentDigest":
        self._digest.update(np.ascontiguousarray(block).tobytes())
        return self

    def finish(self, f: h5py.File) -> str:
        self._digest.update(f["labels"][()].astype(np.int32).tobytes())
        self._digest.update(f["index"][()].astype(np.int64).tobytes())
        if self.version >= 2:
            for name in _HASHED:
                self._part(name, _dataset_bytes(f, name))
            meta = read_attrs(f)
            self._part("attrs", json.dumps({k: meta.get(k) for k in _HASHED_ATTRS}, sort_keys=True).encode())
        return self._digest.hexdigest()

    def _part(self, name: str, payload: bytes) -> None:
        self._digest.update(name.encode() + b"\0" + len(payload).to_bytes(8, "little") + payload)


def _dataset_bytes(f: h5py.File, name: str) -> bytes:
    """A dataset's values as unambiguous bytes (variable-length items length-prefixed)."""
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        return b"absent"
    data = ds[()]
    if data.dtype == object:
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in data.tolist()]
        return b"".join(len(v).to_bytes(8, "little") + v for v in items)
    data = np.ascontiguousarray(data)
    return f"{data.dtype.str}{data.shape}".encode() + data.tobytes()


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
        from concurrent.futures import ThreadPoolExecutor

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
            labels = manifest.labels[index].astype(np.int32)
            f.create_dataset("labels", data=labels)
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
            for key, value in {**attrs, "content_hash_version": CONTENT_HASH_VERSION, "n_rows": n_rows,
                               "n_skipped": len(skipped)}.items():
                f.attrs[key] = json.dumps(value, sort_keys=True) if key in _JSON_ATTRS else value
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
    import multiprocessing

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
        _remember(path, _stamp(path), value)  # hashed as written: its first reader need not hash it again
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
            if "file locking" in _h5_reason(err):
                raise CacheError(f"feature set {display(str(self.path))} cannot be opened: {_h5_reason(err)}") from None
            raise damaged(self.path, f"unreadable or corrupted: {_h5_reason(err)}") from None
        try:
            if not self._file.attrs.get("complete", False) or "features" not in self._file:
                raise CacheError(f"feature set {display(str(self.path))} is incomplete: run the same `featcache extract` again to finish it")
            self.meta = read_attrs(self._file)
            found = _structure(self._file, self.meta)
            if found:
                raise damaged(self.path, found[0])
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
        return f"<FeatureSet {self.id} {self.meta.get('model')} {self.meta.get('layer')} {len(self)}x{self.feature_shape}>"

    def __len__(self) -> int:
        return int(self._file["features"].shape[0])

    # -- contents --------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.meta["id"]

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
        return [_text(v) for v in self._file["class_names"][()]]

    @property
    def paths(self) -> list[str]:
        return [os.fsdecode(v) for v in self._file["paths"][()]]

    @property
    def split(self) -> np.ndarray:
        return np.array([_text(v) for v in self._file["split"][()]], dtype=object)

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
        return int(self.meta.get("n_views", 1))

    @property
    def skipped(self) -> list[tuple[str, str]]:
        m = [os.fsdecode(v) for v in self._file["manifest/path"][()]]
        idx = self._file["skipped/index"][()]
        reasons = [_text(v) for v in self._file["skipped/reason"][()]]
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
            root=Path(self.meta.get("data_root", ".")),
            paths=[os.fsdecode(v) for v in m["path"][()]],
            sizes=m["size"][()],
            mtimes=m["mtime_ns"][()],
            labels=m["label"][()],
            splits=[_text(v) for v in m["split"][()]],
            class_names=self.class_names,
            labels_file=(self.meta.get("extract_args") or {}).get("labels"),
            content_hashes=[_text(v) for v in m["sha256"][()]] if "sha256" in m else None,
        )

    def load(self, dtype=None) -> np.ndarray:
        """All features in memory (contiguous read: far faster than h5py fancy indexing)."""
        try:
            data = self._file["features"][()]
        except OSError as err:  # a damaged chunk fails its fletcher32 checksum
            raise damaged(self.path, f"unreadable rows: {_h5_reason(err)}") from None
        return data.astype(dtype, copy=False) if dtype is not None else data

    def iter_blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        ds = self._file["features"]
        step = rows or (ds.chunks[0] if ds.chunks else max(len(self), 1))
        for start in range(0, len(self), step):
            try:
                block = ds[start:start + step]
            except OSError as err:
                raise damaged(self.path, f"unreadable rows from {start}: {_h5_reason(err)}") from None
            yield start, block


def read_attrs(f: h5py.File) -> dict:
    out = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if key in _JSON_ATTRS and isinstance(value, str):
            try:
                value = json.loads(value)  # data, never evaluated
            except ValueError:
                path = Path(f.filename)
                raise damaged(path, f"attribute {key!r} is not valid JSON") from None
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def peek(path: Path) -> dict | None:
    """Attributes of a feature-set file, or None when it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return read_attrs(f)
    except (OSError, ValueError, CacheError):
        return None


# ------------------------------------------------------------------------------------ integrity
def damaged(path: Path, reason: str) -> DamagedError:
    path = Path(path)
    if re.fullmatch(rf"[0-9a-f]{{{ID_LENGTH}}}(\.shard-\d+-of-\d+)?\{SUFFIX}", path.name):
        name = path.name if ".shard-" in path.name else path.stem  # how `featcache cache rm` names it
        return DamagedError(f"feature set {name} is damaged ({reason}): `featcache cache rm {name}` and run "
                            "`featcache extract` again (the same extract command also replaces it)", reason)
    return DamagedError(f"{display(str(path))} is not a usable feature set ({reason}): give a feature-set id from "
                        "`featcache cache list`, or delete that file and extract again", reason)


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


def _agreement(fs: "FeatureSet") -> list[str]:
    """The rows against the manifest, and the manifest against the hash the id was made from: holds for
    every file, so version-1 files (whose content hash covers only rows, labels and index) are checked too."""
    f, out = fs._file, []
    index, manifest = f["index"][()], f["manifest"]
    n_files, n_classes = manifest["path"].shape[0], f["class_names"].shape[0]
    if len(index) and (index.min() < 0 or index.max() >= n_files):
        return ["/index points outside /manifest"]
    labels = f["labels"][()]
    if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):
        out.append("/labels point outside /class_names")
    for rows, column in (("labels", "label"), ("split", "split"), ("paths", "path")):
        if not np.array_equal(f[rows][()], manifest[column][()][index]):
            out.append(f"/{rows} disagree with /manifest/{column}")
    if "view" in f and not np.array_equal(f["view"][()], view_numbers(index)):
        out.append("/view disagrees with /index")
    skipped = f["skipped/index"][()]
    if len(skipped) and (skipped.min() < 0 or skipped.max() >= n_files):
        out.append("/skipped/index points outside /manifest")
    recorded = fs.meta.get("manifest_sha256")
    if recorded is not None:
        if fs.manifest().sha256 != recorded:
            out.append("/manifest or /class_names differ from the manifest hash recorded at extraction")
        elif "key" in fs.meta:
            if feature_set_id(fs.meta["key"], recorded) != fs.id:
                out.append("the id does not match the recorded key and manifest")
    return out


def problems(fs: "FeatureSet", features: np.ndarray | None = None) -> list[str]:
    """Everything wrong with an open feature set, reading every row (or hashing ``features``, the rows
    already in memory). The one definition of "damaged": ``check`` and ``verify`` both use it."""
    try:
        digest = ContentDigest(fs.meta.get("content_hash_version", 1))
    except CacheError as err:
        return [str(err)]
    try:
        if features is None:
            for _, block in fs.iter_blocks():
                digest.features(block)
        else:
            digest.features(features)
        out = [] if digest.finish(fs._file) == fs.meta.get("content_sha256") else [
            "content hash differs from the one recorded at extraction: the file was altered"]
        return out + _agreement(fs)
    except DamagedError as err:
        return [err.reason]
    except (OSError, ValueError, KeyError, TypeError) as err:  # h5py reports damaged metadata as any of these
        return [f"unreadable data ({_h5_reason(err)})"]


def check(fs: "FeatureSet", features: np.ndarray | None = None) -> None:
    """The integrity gate every reader of rows passes (fit, audit, predict --features, sweep, report,
    ``open_features``): ``problems`` once per state of the file, then remembered (``_memo``); a
    DamagedError naming the fix otherwise. A failed check is never remembered."""
    key, stamp = os.path.realpath(fs.path), _stamp(fs.path)
    if stamp is not None and _memo_read().get(key) == stamp + [fs.meta.get("content_sha256")]:
        return
    found = problems(fs, features)
    if found:
        _memo_update(key, None)
        raise damaged(fs.path, found[0] + (f"; {len(found) - 1} more problem(s)" if len(found) > 1 else ""))
    _remember(fs.path, stamp, fs.meta.get("content_sha256"))


def open_verified(path: str | os.PathLike) -> "FeatureSet":
    """A ``FeatureSet`` that passed ``check``."""
    fs = FeatureSet(path)
    try:
        check(fs)
    except BaseException:
        fs.close()
        raise
    return fs


def verify(path: Path) -> list[str]:
    """``featcache cache verify``: ``problems`` always, never the memo (a success is remembered)."""
    try:
        fs = FeatureSet(path)
    except DamagedError as err:
        return [err.reason]
    except CacheError as err:
        return [str(err)]
    with fs:
        stamp = _stamp(fs.path)
        found = problems(fs)
        if found:
            _memo_update(os.path.realpath(fs.path), None)
        else:
            _remember(fs.path, stamp, fs.meta.get("content_sha256"))
    return found


# The memo of verified files lives in featcache's user cache dir (``verified-v1.json``), not in the
# cache dir: a cache dir may be read-only or shared, and a record there could vouch for files to
# other users. Its key is the file's real path; its value the file's device, inode, size, mtime_ns
# and ctime_ns (ctime cannot be set back by a user, so an in-place edit that restores the mtime is
# still seen) and the recorded content hash. Any change to the file means a fresh check.
_MEMO = "verified-v1.json"
_MEMO_MAX = 2000


def _memo_file() -> Path:
    return user_cache_dir() / _MEMO


def _stamp(path: Path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _memo_read() -> dict:
    try:
        memo = json.loads(_memo_file().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _memo_update(key: str, value: list | None) -> None:
    """Best effort: a memo that cannot be written only costs a check next time."""
    memo = _memo_read()
    if memo.pop(key, None) is None and value is None:
        return
    if value is not None:
        memo[key] = value
    memo = dict(list(memo.items())[-_MEMO_MAX:])
    try:
        _memo_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_memo_file(), json.dumps(memo))
    except OSError:
        pass


def _remember(path: Path, stamp: list | None, content: str | None) -> None:
    """Record a file as verified if it is still exactly as it was when the check began."""
    if stamp is not None and content and _stamp(path) == stamp:
        _memo_update(os.path.realpath(path), stamp + [content])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5_reason(err: Exception) -> str:
    text = str(err)
    for hint in ("truncated", "signature", "checksum", "Fletcher32", "filter returned failure", "bad object header", "file locking"):
        if hint.lower() in text.lower():
            if hint == "file locking":
                return "HDF5 file locking failed; on network filesystems set HDF5_USE_FILE_LOCKING=FALSE"
            return {"signature": "not an HDF5 file", "Fletcher32": "checksum mismatch",
                    "filter returned failure": "a chunk fails its checksum or decompression"}.get(hint, hint)
    return text.splitlines()[0][:120] if text else type(err).__name__
