"""Issue 12: looking things up in the cache reads no more than it needs."""

from __future__ import annotations

from collections import Counter

import h5py
import pytest

from featcache.core.errors import CacheError
from featcache.store import cache


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


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import featcache
    from tests.conftest import make_images

    root = tmp_path_factory.mktemp("predict")
    data = make_images(root / "data", classes=("red", "blue"), per_class=6, size=(40, 40))
    result = featcache.extract(data, model="resnet18", weights="none", image_size=32, cache_dir=root / "cache", progress_bar=False)
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=2, cache_dir=root / "cache", runs_dir=root / "runs", progress_bar=False)
    return {"data": data, "cache": root / "cache", "run": run, "path": result.path}


def test_predict_checks_the_sets_identity_without_reading_its_features(fitted, monkeypatch):
    import featcache
    from featcache import store

    def forbidden(*args, **kwargs):
        raise AssertionError("predict must not read the training features")

    for name in ("verify", "read_features"):
        monkeypatch.setattr(store, name, forbidden, raising=False)
    monkeypatch.setattr("featcache.fitting.predict.verify", forbidden, raising=False)
    monkeypatch.setattr(store.FeatureSet, "iter_blocks", forbidden)
    monkeypatch.setattr(store.FeatureSet, "load", forbidden)
    image = next(fitted["data"].rglob("*.png"))
    [label] = featcache.predict([image], fitted["run"].path, cache_dir=fitted["cache"], progress_bar=False)
    assert label.label in ("red", "blue") and label.error is None


@pytest.mark.parametrize("attr,value", [("content_sha256", "0" * 64), ("id", "ffffffffffffffff"), ("key", '{"other": 1}')])
def test_predict_refuses_a_set_whose_recorded_identity_differs(fitted, tmp_path, attr, value):
    import shutil

    import featcache
    from featcache.core.errors import RunError

    cache = tmp_path / "c"
    shutil.copytree(fitted["cache"], cache)
    path = cache / fitted["path"].name
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    run = fitted["run"]
    copied = tmp_path / "run"
    shutil.copytree(run.path, copied)
    params = copied / "params.json"
    params.write_text(params.read_text().replace(str(fitted["path"]), str(path)))
    import hashlib
    import json

    sums = json.loads((copied / "checksums.json").read_text())
    sums["params.json"] = hashlib.sha256(params.read_bytes()).hexdigest()
    (copied / "checksums.json").write_text(json.dumps(sums))
    image = next(fitted["data"].rglob("*.png"))
    with pytest.raises(RunError, match="not the one run"):
        featcache.predict([image], copied, cache_dir=cache, progress_bar=False)
