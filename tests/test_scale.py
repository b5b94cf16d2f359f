"""Issue 7: Ray extraction, sharded extraction + merge, Ray-backed grid search (a local Ray, 2 CPUs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featcache
from featcache.core.errors import CacheError
from featcache.extraction.shards import merge
from tests.conftest import cli_env, make_images
from tests.conftest import featcache as run_cli

FAST = dict(model="resnet18", weights="none", image_size=32, progress_bar=False, batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return make_images(root / "data", classes=("a", "b", "c"), per_class=10, size=(64, 48))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featcache[ray]'")
    from featcache.core.cluster import connect

    connect(num_cpus=2)
    yield ray
    ray.shutdown()


def _load(result):
    with result.open() as fs:
        return fs.load(np.float32), fs.paths, fs.labels, fs.meta


def test_ray_engine_gives_the_same_feature_set_as_the_local_engine(data, tmp_path, ray_cluster):
    (data / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    try:
        local = featcache.extract(data, cache_dir=tmp_path / "local", **FAST)
        remote = featcache.extract(data, cache_dir=tmp_path / "ray", engine="ray", **FAST)
        again = featcache.extract(data, cache_dir=tmp_path / "ray", engine="ray", **FAST)
    finally:
        (data / "b" / "broken.jpg").unlink()
    assert remote.id == local.id and not remote.cache_hit
    X1, p1, y1, m1 = _load(local)
    X2, p2, y2, m2 = _load(remote)
    assert p1 == p2 and np.array_equal(y1, y2) and len(p1) == 30
    np.testing.assert_allclose(X2, X1, rtol=2e-3, atol=1e-4)  # float16 storage: batches differ, so may the last bit
    assert remote.skipped == local.skipped == [("b/broken.jpg", "not an image Pillow can read (unknown format or corrupt header)")]
    for key in ("key", "model", "layer", "preprocess", "manifest_sha256", "feature_shape"):
        assert m1[key] == m2[key]
    assert again.cache_hit


def test_two_shards_merged_equal_one_unsharded_extraction(data, tmp_path):
    whole = featcache.extract(data, cache_dir=tmp_path / "whole", **FAST)
    cache = tmp_path / "shards"
    for i in (1, 0):  # any order, e.g. two SLURM array tasks
        r = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                    "--batch-size", "8", "--shard", f"{i}/2", "--cache-dir", cache, "-q", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rows"] == 15
    with pytest.raises(CacheError, match="incomplete"):
        featcache.open_features(whole.id, cache)
    merged = run_cli("cache", "merge", whole.id[:8], "--cache-dir", cache, "-q")
    assert merged.returncode == 0, merged.stderr
    with featcache.open_features(whole.id, cache) as m, whole.open() as w:
        assert m.paths == w.paths and np.array_equal(m.load(), w.load())
        assert m.meta["content_sha256"] == w.meta["content_sha256"] and m.id == w.id
    assert not list(cache.glob("*.shard-*"))


def test_merge_refuses_incomplete_or_inconsistent_shards(data, tmp_path):
    cache = tmp_path / "c"
    first = featcache.extract(data, cache_dir=cache, shard="0/3", **FAST)
    featcache.extract(data, cache_dir=cache, shard="2/3", **FAST)
    with pytest.raises(CacheError, match=r"missing shard\(s\) 1/3"):
        merge(first.id, cache)
    featcache.extract(data, cache_dir=cache, shard="1/2", **FAST)
    with pytest.raises(CacheError, match="disagree on N"):
        merge(first.id, cache)
    r = run_cli("extract", "--data", data, "--shard", "2/2", "--cache-dir", cache)
    assert r.returncode == 1 and "--shard 2/2" in r.stderr and "0..1" in r.stderr


def test_ray_grid_search_gives_the_same_scores_as_local(data, tmp_path, ray_cluster):
    featcache.extract(data, cache_dir=tmp_path / "c", **FAST)
    common = dict(head="logreg", params={"C": [0.1, 1.0, 10.0]}, cv=3, cache_dir=tmp_path / "c", progress_bar=False)
    local = featcache.fit(runs_dir=tmp_path / "local", **common)
    remote = featcache.fit(runs_dir=tmp_path / "ray", backend="ray", n_jobs=2, **common)
    a, b = local.metrics.cv_results, remote.metrics.cv_results
    for k in range(3):
        assert a[f"split{k}_test_score"] == b[f"split{k}_test_score"]
    assert local.metrics.best_params == remote.metrics.best_params
    assert local.test_accuracy == remote.test_accuracy


def test_engine_ray_without_ray_says_how_to_install(data, tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = cli_env(PYTHONPATH=str(tmp_path / "noray"))
    r = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                "--engine", "ray", "--cache-dir", tmp_path / "c", env=env)
    assert r.returncode == 1 and "pip install 'featcache[ray]'" in r.stderr and "Traceback" not in r.stderr
