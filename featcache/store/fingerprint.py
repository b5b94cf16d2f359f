"""Feature-set ids: a hash of a canonical JSON of everything that changes the numbers.

In: the extractor record (architecture, weights identity, layer, pooling, preprocessing), how
files are decoded, numeric precision, storage dtype, the augmented views (when there are any), the
data manifest and a format version. Out:
where files live, batch size, workers, device index: they change speed, not values. (On the CPU a
different batch size can move the last bits; resume therefore keeps the recorded batch size.)
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the store checks ids without importing torch
    from featcache.backbones.spec import ExtractorSpec
    from featcache.config.decode import Decode

# Bump when a change in featcache makes the same inputs produce different numbers.
KEY_VERSION = 1
ID_LENGTH = 16


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def digest(obj) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def config_key(spec: ExtractorSpec, decode: Decode, dtype: str, precision: str, views=None) -> dict:
    """``views``: a ``views.Views`` recipe; none (or None) leaves the key as it was before views existed."""
    key = {
        "featcache_key": KEY_VERSION,
        "extractor": spec.key(),
        "decode": decode.key(),
        "dtype": dtype,
        "precision": precision,
    }
    if views is not None and views.key() is not None:
        key["views"] = views.key()
    return key


def config_id(key: dict) -> str:
    return digest(key)[:ID_LENGTH]


def feature_set_id(key: dict, manifest_sha256: str) -> str:
    return digest({"config": key, "manifest": manifest_sha256})[:ID_LENGTH]
