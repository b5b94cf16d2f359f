"""The HDF5 layer under a feature-set file: the file suffix, how attributes are encoded (JSON for the
nested ones), what h5py's errors mean to a user, and the one-line message for a damaged file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from featcache.core.errors import DamagedError
from featcache.core.text import display
from featcache.store.fingerprint import ID_LENGTH

SUFFIX = ".h5"
JSON_ATTRS = ("preprocess", "decode", "versions", "key", "extract_args", "data_root", "feature_shape")


def read_attrs(f: h5py.File) -> dict:
    out = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if key in JSON_ATTRS and isinstance(value, str):
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


def write_attrs(f: h5py.File, attrs: dict) -> None:
    for key, value in attrs.items():
        f.attrs[key] = json.dumps(value, sort_keys=True) if key in JSON_ATTRS else value


def damaged(path: Path, reason: str) -> DamagedError:
    path = Path(path)
    if re.fullmatch(rf"[0-9a-f]{{{ID_LENGTH}}}(\.shard-\d+-of-\d+)?\{SUFFIX}", path.name):
        name = path.name if ".shard-" in path.name else path.stem  # how `featcache cache rm` names it
        return DamagedError(f"feature set {name} is damaged ({reason}): `featcache cache rm {name}` and run "
                            "`featcache extract` again (the same extract command also replaces it)", reason)
    return DamagedError(f"{display(str(path))} is not a usable feature set ({reason}): give a feature-set id from "
                        "`featcache cache list`, or delete that file and extract again", reason)


def text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def reason(err: Exception) -> str:
    text = str(err)
    for hint in ("truncated", "signature", "checksum", "Fletcher32", "filter returned failure", "bad object header", "file locking"):
        if hint.lower() in text.lower():
            if hint == "file locking":
                return "HDF5 file locking failed; on network filesystems set HDF5_USE_FILE_LOCKING=FALSE"
            return {"signature": "not an HDF5 file", "Fletcher32": "checksum mismatch",
                    "filter returned failure": "a chunk fails its checksum or decompression"}.get(hint, hint)
    return text.splitlines()[0][:120] if text else type(err).__name__
