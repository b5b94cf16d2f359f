"""Issue 12: looking things up in the cache reads no more than it needs."""

from __future__ import annotations

from collections import Counter

import h5py
import pytest

from featcache import cache
from featcache.errors import CacheError


@pytest.fixture
def opens(monkeypatch):
    """Count every h5py.File opened, by file name."""
    counts: Counter = Counter()
    real = h5py.File

    def counting(name, *args, **kwargs):
        counts[str(name).rsplit("/", 1)[-1]] += 1
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting)
    return counts


def _fake_sets(root, ids):
    root.mkdir()
    for fsid in ids:
        with h5py.File(root / f"{fsid}.h5", "w") as f:
            f.attrs["id"] = fsid
            f.attrs["complete"] = True
            f.attrs["created"] = "2026-01-01T00:00:00+00:00"
    return root


IDS = ["aaaa000000000001", "aaaa000000000002", "bbbb000000000003"]


def test_find_reads_each_file_once(tmp_path, opens):
    root = _fake_sets(tmp_path / "cache", IDS)
    opens.clear()
    assert cache.find("bbbb", root) == root / "bbbb000000000003.h5"
    assert opens == Counter({f"{i}.h5": 1 for i in IDS})
    opens.clear()
    with pytest.raises(CacheError, match="ambiguous"):
        cache.find("aaaa", root)
    assert opens == Counter({f"{i}.h5": 1 for i in IDS})


def test_find_reads_each_file_once_when_nothing_matches(tmp_path, opens):
    root = _fake_sets(tmp_path / "cache", IDS)
    opens.clear()
    with pytest.raises(CacheError, match="no feature set 'cccc'"):
        cache.find("cccc", root)
    assert opens == Counter({f"{i}.h5": 1 for i in IDS})
