"""The content hash recorded at extraction: what "altered" means, for the writer and every checker alike."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

from featcache.core.errors import CacheError
from featcache.store.h5 import read_attrs

# What the content hash covers, by the file's ``content_hash_version`` attribute (absent: 1).
#   1: the feature bytes in row order, then each row's label and manifest index.
#   2: all of 1, then every other dataset and attribute that can change a result (_HASHED below).
# Files keep the version they were written with (and so their ids and cache hits); ``verify`` adds
# structural and cross checks that hold for both (see ``problems``).
CONTENT_HASH_VERSION = 2
_HASHED = ("view", "paths", "split", "class_names", "manifest/path", "manifest/size", "manifest/mtime_ns", "manifest/label",
           "manifest/split", "manifest/sha256", "skipped/index", "skipped/reason")
_HASHED_ATTRS = ("id", "key", "n_views", "manifest_sha256")


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
