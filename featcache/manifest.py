"""The list of input images a feature set was made from, and how it changed since.

A manifest is the class folders walked in a fixed order with each file's size and mtime: cheap to
take (stat only, no decoding), so every ``extract`` and ``fit`` can compare the folder with what a
feature set was built from. Its hash is the data part of the feature-set id.

Labels come from one of three layouts: class folders (``root/<class>/*.jpg``, optionally under
``train|val|test/``), a labels file (``--labels FILE.csv`` with columns ``path,label[,split]``,
paths relative to the root), or none at all (a folder of images without class subfolders: every
row is unlabelled, label -1). Where labels come from a file they are part of the manifest hash;
for class folders the path already says the label, and the hash is what it always was.

Each entry may also carry the SHA-256 of the file's bytes (``content_hashes``, computed once at
extraction, see ``hash_files``): it finds byte-identical files for ``audit`` and stays outside the
manifest hash, so recording it changed no feature-set id.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

UNLABELLED = -1  # the label of a row from a folder without class subfolders

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLITS = ("train", "val", "test")


def display(path: str) -> str:
    """A printable form of a relative path, even when the name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class Manifest:
    """Entries sorted by relative path; arrays are aligned by entry index."""

    root: Path
    paths: list[str]  # relative to root, os.fsdecode'd (may hold surrogate escapes)
    sizes: np.ndarray  # int64, -1 where the file could not be stat'ed
    mtimes: np.ndarray  # int64 nanoseconds
    labels: np.ndarray  # int32 index into class_names
    splits: list[str]  # "train" | "val" | "test" | "" (no split layout)
    class_names: list[str]
    unreadable: dict[int, str] = field(default_factory=dict)  # entry -> why it could not be stat'ed
    ignored: list[str] = field(default_factory=list)  # non-image files in class folders
    labels_file: str | None = None  # the CSV the labels came from (then they enter the hash)
    unlisted: list[str] = field(default_factory=list)  # images under root that the labels file leaves out
    content_hashes: list[str] | None = None  # sha256 hex of each file's bytes ("" unknown); not in the hash

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        digest.update("\0".join(self.class_names).encode() + b"\n")
        for path, size, mtime in zip(self.paths, self.sizes.tolist(), self.mtimes.tolist()):
            digest.update(os.fsencode(path) + b"\0%d\0%d\n" % (size, mtime))
        if self.labels_file is not None:
            # A labels file decides what a path is labelled: two files, two ids; the same file, a cache hit.
            digest.update(b"labels\n")
            for label, split in zip(self.labels.tolist(), self.splits):
                digest.update(b"%d\0%s\n" % (label, split.encode()))
        return digest.hexdigest()

    def signatures(self) -> dict[str, tuple[int, int]]:
        return {p: (s, m) for p, s, m in zip(self.paths, self.sizes.tolist(), self.mtimes.tolist())}

    def subset(self, indices: np.ndarray) -> "Manifest":
        idx = np.asarray(indices, dtype=np.int64)
        return Manifest(
            root=self.root,
            paths=[self.paths[i] for i in idx],
            sizes=self.sizes[idx],
            mtimes=self.mtimes[idx],
            labels=self.labels[idx],
            splits=[self.splits[i] for i in idx],
            class_names=self.class_names,
            unreadable={j: self.unreadable[i] for j, i in enumerate(idx.tolist()) if i in self.unreadable},
            labels_file=self.labels_file,
            content_hashes=None if self.content_hashes is None else [self.content_hashes[i] for i in idx],
        )


@dataclass(frozen=True)
class ManifestDiff:
    added: list[str]
    removed: list[str]
    modified: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("added", self.added), ("removed", self.removed), ("modified", self.modified)) if v]
        example = (self.added + self.modified + self.removed)[:1]
        return ", ".join(parts) + (f" (e.g. {display(example[0])})" if example else "")


def diff(old: dict[str, tuple[int, int]], new: Manifest) -> ManifestDiff:
    current = new.signatures()
    return ManifestDiff(
        added=sorted(p for p in current if p not in old),
        removed=sorted(p for p in old if p not in current),
        modified=sorted(p for p in current if p in old and tuple(old[p]) != current[p]),
    )


def scan(root: str | os.PathLike, labels: str | os.PathLike | None = None) -> Manifest:
    """Walk an ImageFolder tree (``root/class/*.jpg``) or a split one (``root/train/class/*.jpg``);
    with ``labels``, every image under ``root`` labelled by that CSV file; a folder of images without
    class subfolders gives unlabelled rows."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist: pass your image folder with --data (default ./data)")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory: pass a folder with one subfolder per class")
    if labels is not None:
        return _scan_labels_file(root, Path(labels))
    top = _subdirs(root)
    if not top:
        return _scan_unlabelled(root)
    split_layout = bool(top) and all(d.name.lower() in SPLIT_ALIASES for d in top)
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in top] if split_layout else [("", root)]

    class_dirs: list[tuple[str, str, Path]] = []  # (split, class, dir)
    for split, base in groups:
        classes = _subdirs(base)
        if not classes:
            where = f"{base} (split {split})" if split else str(base)
            raise DataError(
                f"no class folders in {where}: put each class's images in its own subfolder, e.g. {base}/cats/1.jpg"
            )
        class_dirs += [(split, d.name, d) for d in classes]
    class_names = sorted({c for _, c, _ in class_dirs})
    label_of = {c: i for i, c in enumerate(class_names)}

    rows: list[tuple[bytes, str, int, int, int, str, str | None]] = []
    ignored: list[str] = []
    for split, cls, folder in class_dirs:
        found = 0
        for path in _walk_files(folder):
            rel = os.path.relpath(path, root)
            if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(rel)
                continue
            size, mtime, problem = _stat(path)
            rows.append((os.fsencode(rel), rel, size, mtime, label_of[cls], split, problem))
            found += 1
        if not found:
            raise DataError(
                f"class folder {display(str(folder))} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:5])}, ...): "
                "add images or remove the folder"
            )
    return _build(root, rows, class_names, ignored)


def _build(root: Path, rows: list[tuple[bytes, str, int, int, int, str, str | None]], class_names: list[str],
           ignored: list[str], **extra) -> Manifest:
    """Rows ``(path bytes, path, size, mtime_ns, label, split, problem)`` -> a Manifest in byte order of
    the paths (the same order on every platform and locale: part of the manifest hash)."""
    rows.sort(key=lambda r: r[0])
    return Manifest(
        root=root.resolve(), paths=[r[1] for r in rows], sizes=np.array([r[2] for r in rows], dtype=np.int64),
        mtimes=np.array([r[3] for r in rows], dtype=np.int64), labels=np.array([r[4] for r in rows], dtype=np.int32),
        splits=[r[5] for r in rows], class_names=class_names, unreadable={i: r[6] for i, r in enumerate(rows) if r[6]},
        ignored=sorted(ignored), **extra,
    )


def _row(root: Path, path: str) -> tuple[bytes, str, int, int, str | None]:
    rel = os.path.relpath(path, root)
    size, mtime, problem = _stat(path)
    return os.fsencode(rel), rel, size, mtime, problem


def _scan_unlabelled(root: Path) -> Manifest:
    """A folder of images with no class subfolders: rows without labels (audit and predict use them)."""
    rows, ignored = [], []
    for path in _walk_files(root):
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            path_bytes, rel, size, mtime, problem = _row(root, path)
            rows.append((path_bytes, rel, size, mtime, UNLABELLED, "", problem))
        else:
            ignored.append(os.path.relpath(path, root))
    if not rows:
        raise DataError(
            f"no class folders and no images in {root}: put each class's images in its own subfolder, e.g. {root}/cats/1.jpg, "
            "or images directly in it for an unlabelled set"
        )
    return _build(root, rows, [], ignored)


def read_labels_file(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    """``{relative path: (label, split)}`` from a CSV with a header ``path,label[,split]``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist: pass a CSV with columns path,label[,split] to --labels") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read labels file {path} ({err}): pass a UTF-8 CSV with columns path,label[,split]") from None
    reader = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    for column in ("path", "label"):
        if column not in header:
            raise DataError(f"labels file {path} has no '{column}' column (header: {','.join(header) or 'empty'}): "
                            "its first line must be path,label or path,label,split")
    at = {name: header.index(name) for name in ("path", "label", "split") if name in header}
    out: dict[str, tuple[str, str]] = {}
    line_of: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cell = lambda name: row[at[name]].strip() if name in at and at[name] < len(row) else ""  # noqa: E731
        raw, label, split = cell("path"), cell("label"), cell("split")
        where = f"labels file {path}, line {line}"
        if not raw:
            raise DataError(f"{where}: empty path: give each image's path relative to --data")
        if not label:
            raise DataError(f"{where}: {raw} has no label: fill it in or drop the row")
        if split and split.lower() not in SPLIT_ALIASES:
            raise DataError(f"{where}: unknown split {split!r}: use train, val, test or leave it empty")
        rel = os.path.relpath(os.path.abspath(raw if os.path.isabs(raw) else root / raw), os.path.abspath(root))
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise DataError(f"{where}: {raw} is outside the data folder {root}: paths are relative to --data")
        value = (label, SPLIT_ALIASES[split.lower()] if split else "")
        if rel in out and out[rel] != value:
            raise DataError(f"{where}: {raw} is listed again with another label or split "
                            f"({out[rel][0]!r} on line {line_of[rel]}, {label!r} here): keep one row per image")
        out[rel], line_of[rel] = value, line
    if not out:
        raise DataError(f"labels file {path} lists no images: add rows path,label[,split] below the header")
    return out


def _scan_labels_file(root: Path, labels: Path) -> Manifest:
    """Every row the CSV lists (missing files become skipped rows with a reason); images under the
    root that it does not list are reported as ``unlisted``, not silently dropped."""
    listed = read_labels_file(labels, root)
    class_names = sorted({label for label, _ in listed.values()})
    label_of = {c: i for i, c in enumerate(class_names)}
    on_disk = {}
    ignored = []
    for path in _walk_files(root):
        rel = os.path.relpath(path, root)
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            on_disk[rel] = path
        elif rel not in listed and os.path.abspath(path) != os.path.abspath(labels):
            ignored.append(rel)
    rows = []
    for rel, (label, split) in listed.items():
        if rel in on_disk or os.path.lexists(root / rel):
            _, _, size, mtime, problem = _row(root, str(root / rel))
        else:
            size, mtime, problem = -1, 0, f"listed in {labels.name} but not found under the data folder"
        rows.append((os.fsencode(rel), rel, size, mtime, label_of[label], split, problem))
    return _build(root, rows, class_names, ignored, labels_file=str(labels.resolve()),
                  unlisted=sorted((rel for rel in on_disk if rel not in listed), key=os.fsencode))


def hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex ("" when it cannot be read). hashlib releases the GIL on large
    buffers, so ``hash_files``' threads overlap."""
    from .files import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return ""


def hash_files(manifest: Manifest, entries, known: dict[str, tuple[int, int, str]] | None = None, progress=None,
               threads: int = 4) -> list[str]:
    """Content hashes of ``entries`` of ``manifest``, others "".

    ``known``: ``{path: (size, mtime_ns, sha256)}`` from earlier feature sets of the folder: a file
    whose size and mtime still match is not read again. A file that changed since the manifest was
    taken gets "" rather than a hash of bytes the features were not made from.
    """
    from concurrent.futures import ThreadPoolExecutor

    out = [""] * len(manifest)
    known = known or {}
    todo = []
    for i in entries:
        path, size, mtime = manifest.paths[i], int(manifest.sizes[i]), int(manifest.mtimes[i])
        old = known.get(path)
        if size > 0 and old and (old[0], old[1]) == (size, mtime) and old[2]:
            out[i] = old[2]
        elif size > 0:
            todo.append(i)
            continue
        if progress is not None:
            progress.update(1)

    def one(i: int) -> tuple[int, str]:
        full = manifest.root / manifest.paths[i]
        value = hash_file(full)
        return i, value if _stat(str(full))[:2] == (int(manifest.sizes[i]), int(manifest.mtimes[i])) else ""

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, value in pool.map(one, todo):
            out[i] = value
            if progress is not None:
                progress.update(1)
    return out


def _subdirs(path: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: os.fsencode(e.name))
    except PermissionError:
        raise DataError(f"cannot list {path}: permission denied; make it readable (chmod +rx)") from None
    return [Path(e.path) for e in entries if not e.name.startswith(".") and _is_dir(e)]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _walk_files(folder: Path):
    """Files under ``folder`` (following directory symlinks once, never looping), hidden ones left out."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def _stat(path: str) -> tuple[int, int, str | None]:
    try:
        st = os.stat(path)
    except OSError as err:
        reason = "symlink loop" if err.errno == errno.ELOOP else (err.strerror or type(err).__name__).lower()
        return -1, 0, f"cannot stat file: {reason}"
    if not stat_mod.S_ISREG(st.st_mode):
        return -1, 0, "not a regular file"
    if st.st_size == 0:
        return 0, int(st.st_mtime_ns), "empty file (0 bytes)"
    return int(st.st_size), int(st.st_mtime_ns), None
