"""Writing files so that a crash never leaves a complete-looking one, and hashing them.

Every featcache file (staged batches, feature sets, run files, memo files) is written to a
temporary name in the same folder and moved into place with ``os.replace``: readers see the old
file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np


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
