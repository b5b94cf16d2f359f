"""Writing files so that a crash never leaves a complete-looking one, and hashing them.

Every file featcache writes (staged batches, feature sets, run records, reports, plots, thumbnails,
CSV and JSON files, memo files) is written to a temporary name in the same folder and moved into
place with ``os.replace``: readers see the old file or the new one, never half of one.

Every folder featcache writes its outputs into (cache, runs, sweeps, audit and comparison folders)
is made by ``output_dir``, which leaves a marker in it: a data folder may hold them (``extract
--data .`` run where ``fit`` writes ``runs/``), and ``scan.scan`` must never read featcache's
own plots and thumbnails as images. ``output_kind`` recognises a folder by its marker, by the
standard cache tag, or by the files older versions left in it before the marker existed.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from featcache.core.errors import FeatcacheError

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


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV injection"): a label or a file
# name such as =HYPERLINK(...) would run when someone opens audit.csv. A leading ' makes it text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def to_cell(value) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs: ``'`` before a cell that starts like a
    formula (a plain number such as -0.25 stays a number), and before one that already starts with ``'``
    and such a character, so that ``from_cell`` gives back exactly what was written."""
    text = str(value)
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text) or text.startswith("'") and text[1:2] in (*FORMULA_START, "'"):
        return "'" + text
    return text


def from_cell(text: str) -> str:
    """The value ``to_cell`` wrote (featcache's readers of its own CSV files go through this)."""
    return text[1:] if text.startswith("'") and text[1:2] in (*FORMULA_START, "'") else text


def write_csv(path: Path, header: list[str], rows) -> Path:
    """A CSV file (header, then ``rows``), written atomically, every cell through ``to_cell``."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([to_cell(c) for c in header])
    writer.writerows([to_cell(c) for c in row] for row in rows)
    return atomic_write(path, buffer.getvalue())


def read_csv(path: Path) -> list[list[str]]:
    """The rows of a CSV file that ``write_csv`` wrote, header first, each cell as it was given."""
    with open(path, newline="", encoding="utf-8") as f:
        return [[from_cell(c) for c in row] for row in csv.reader(f)]


def write_json(path: Path, obj, indent: int | None = 2) -> Path:
    """JSON that numpy scalars and arrays can be part of, written atomically."""
    text = json.dumps(obj, indent=indent, default=_json_default, sort_keys=indent is None)
    return atomic_write(path, text + ("\n" if indent else ""))


def save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_save(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def output_dir(path: str | os.PathLike, cache: bool = False, what: str = "output folder",
               fix: str = "choose another folder, or make it writable", error: type[FeatcacheError] = FeatcacheError) -> Path:
    """``path`` (made, with its parents, if missing and checked writable as ``writable_dir`` does),
    marked as featcache's output so no scan reads it.

    A cache folder that featcache creates also gets the standard CACHEDIR.TAG; one that existed
    before is the user's folder, and tagging it would make backup tools skip whatever else it holds.
    """
    path = Path(path)
    created = not path.is_dir()
    writable_dir(path, what, fix, error=error)
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


def writable_dir(path: Path, what: str, fix: str, create: bool = True, error: type[FeatcacheError] = FeatcacheError) -> Path:
    """``path`` as a folder featcache can write into, or one line naming the folder, why not, and ``fix``.

    ``create``: make it (with its parents) and write a probe file in it, the proof that counts;
    otherwise only look, creating nothing, so a command can fail before its long part rather than after.
    """
    path = Path(path)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
            return path
        if path.exists() and not path.is_dir():
            raise FileExistsError(errno.EEXIST, "a file of that name is in the way")
        parent = next(p for p in (path, *path.absolute().parents) if os.path.lexists(p))
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{parent} is read-only for you" if parent != path else "Permission denied")
    except OSError as err:
        reason = {errno.EEXIST: "a file of that name is in the way", errno.ENOTDIR: "part of the path is a file, not a folder"}
        why = err.strerror if not create or err.errno not in reason else reason[err.errno]
        raise error(f"the {what} {path} is not writable ({why or err}): {fix}") from None
    return path


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
