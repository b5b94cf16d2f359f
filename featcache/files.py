"""Writing files so that a crash never leaves a complete-looking one, and hashing them.

Every featcache file (staged batches, feature sets, run files, memo files) is written to a
temporary name in the same folder and moved into place with ``os.replace``: readers see the old
file or the new one, never half of one.

Every folder featcache writes its outputs into (cache, runs, sweeps, audit and comparison folders)
is made by ``output_dir``, which leaves a marker in it: a data folder may hold them (``extract
--data .`` run where ``fit`` writes ``runs/``), and ``manifest.scan`` must never read featcache's
own plots and thumbnails as images. ``output_kind`` recognises a folder by its marker, by the
standard cache tag, or by the files older versions left in it before the marker existed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

OUTPUT_MARKER = ".featcache-output"
# https://bford.info/cachedir/: backup and archiving tools skip a folder holding this tag.
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
# The files older featcache versions left in their output folders, before the marker: a run, a
# sweep, an audit, a comparison of runs.
OLDER_OUTPUTS = (("run", {"checksums.json", "params.json"}), ("sweep", {"sweep.json"}),
                 ("audit", {"audit.csv", "audit.html"}), ("comparison", {"comparison.md", "comparison.html"}))


def temp_name(path: Path) -> Path:
    """A hidden sibling, unique per process: ``.<name>.<pid>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_save(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file, then move it to ``path``; no trace if it fails."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: Path, data: bytes | str) -> Path:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_save(path, lambda f: f.write(payload))


def write_csv(path: Path, header: list[str], rows) -> Path:
    """A CSV file (header, then ``rows``), written atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue())


def write_json(path: Path, obj, indent: int | None = 2) -> Path:
    """JSON that numpy scalars and arrays can be part of, written atomically."""
    text = json.dumps(obj, indent=indent, default=_json_default, sort_keys=indent is None)
    return atomic_write(path, text + ("\n" if indent else ""))


def save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_save(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def output_dir(path: str | os.PathLike, cache: bool = False) -> Path:
    """``path`` (made, with its parents, if missing), marked as featcache's output so no scan reads it.

    A cache folder that featcache creates also gets the standard CACHEDIR.TAG; one that existed
    before is the user's folder, and tagging it would make backup tools skip whatever else it holds.
    """
    path = Path(path)
    created = not path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OUTPUT_MARKER).is_file():
        atomic_write(path / OUTPUT_MARKER, "featcache writes its outputs here; it never reads this folder as image data.\n")
    if cache and created:
        atomic_write(path / CACHEDIR_TAG, CACHEDIR_SIGNATURE.decode() + "\n# This file is a cache directory tag created by "
                     "featcache.\n# For information about cache directory tags, see https://bford.info/cachedir/\n")
    return path


def output_kind(folder: str | os.PathLike, names: set[str]) -> str | None:
    """Why ``folder``, which holds the entries ``names``, is output rather than data (None: it is data)."""
    if OUTPUT_MARKER in names:
        return f"featcache's own output (holds {OUTPUT_MARKER})"
    if CACHEDIR_TAG in names:
        try:
            with open(os.path.join(folder, CACHEDIR_TAG), "rb") as f:
                tagged = f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            tagged = False
        if tagged:
            return f"a cache folder (holds {CACHEDIR_TAG})"
    for kind, files in OLDER_OUTPUTS:
        if files <= names:
            return f"a featcache {kind} folder (holds {', '.join(sorted(files))})"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
