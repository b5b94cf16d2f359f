"""The list of input images a feature set was made from (the record), and how it changed since.

A manifest is the input files in a fixed order with each file's size and mtime: cheap to take (stat
only, no decoding; featcache/extraction/scan.py walks the folder), so every ``extract`` and ``fit`` can
compare the folder with what a feature set was built from. Its hash is the data part of the
feature-set id.

Labels come from one of three layouts: class folders (``root/<class>/*.jpg``, optionally under
``train|val|test/``), a labels file (``--labels FILE.csv`` with columns ``path,label[,split]``,
paths relative to the root), or none at all (a folder of images without class subfolders: every
row is unlabelled, label -1). Where labels come from a file they are part of the manifest hash;
for class folders the path already says the label, and the hash is what it always was.

Each entry may also carry the SHA-256 of the file's bytes (``content_hashes``, computed once at
extraction, see ``scan.hash_files``): it finds byte-identical files for ``audit`` and stays outside the
manifest hash, so recording it changed no feature-set id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.core.text import display

UNLABELLED = -1  # the label of a row from a folder without class subfolders


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
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why): folders and files not read
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
