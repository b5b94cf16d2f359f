"""The list of input images a feature set was made from, and how it changed since.

A manifest is the class folders walked in a fixed order with each file's size and mtime: cheap to
take (stat only, no decoding), so every ``extract`` and ``fit`` can compare the folder with what a
feature set was built from. Its hash is the data part of the feature-set id.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError

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

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        digest.update("\0".join(self.class_names).encode() + b"\n")
        for path, size, mtime in zip(self.paths, self.sizes.tolist(), self.mtimes.tolist()):
            digest.update(os.fsencode(path) + b"\0%d\0%d\n" % (size, mtime))
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


def scan(root: str | os.PathLike) -> Manifest:
    """Walk an ImageFolder tree (``root/class/*.jpg``) or a split one (``root/train/class/*.jpg``)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist: pass your image folder with --data (default ./data)")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory: pass a folder with one subfolder per class")
    top = _subdirs(root)
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
    rows.sort(key=lambda r: r[0])
    return Manifest(
        root=root.resolve(),
        paths=[r[1] for r in rows],
        sizes=np.array([r[2] for r in rows], dtype=np.int64),
        mtimes=np.array([r[3] for r in rows], dtype=np.int64),
        labels=np.array([r[4] for r in rows], dtype=np.int32),
        splits=[r[5] for r in rows],
        class_names=class_names,
        unreadable={i: r[6] for i, r in enumerate(rows) if r[6]},
        ignored=sorted(ignored),
    )


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
