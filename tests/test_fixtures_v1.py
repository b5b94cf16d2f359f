"""Issue 21: files written before the package reorganisation (tests/fixtures/v1, made by
tests/fixtures/make_fixtures.py at commit 3a57f19) stay readable, keep their id, stay cache hits, and
their run still loads, reports and predicts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import pytest

import featcache
from featcache.fitting.runs import load_run
from tests.conftest import featcache as run_cli

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"
FSID = "2d0a24639c068867"
MTIME_NS = 1_780_000_000_000_000_000  # what make_fixtures.py pinned
SETTINGS = dict(model="resnet18", weights="none", image_size=32, pool="avg", progress_bar=False, workers=0)
MADE = ("created", "device", "batch_size", "streams", "compiled", "extract_seconds", "images_per_second", "versions",
        "data_root", "extract_args", "content_sha256", "content_hash_version")  # where and when, not what


@pytest.fixture
def v1(tmp_path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    for image in (tmp_path / "v1" / "data").rglob("*.png"):
        os.utime(image, ns=(MTIME_NS, MTIME_NS))  # a checkout gives files new times; the manifest recorded these
    return tmp_path / "v1"


def test_the_old_feature_set_opens_verifies_and_reads_as_its_record(v1):
    with featcache.open_features(FSID, v1 / "cache") as fs:
        info = fs.info
        assert (info.id, info.model, info.layer, info.pool, info.feature_shape) == (FSID, "resnet18", "layer4", "avg", (512,))
        assert info.views.count == 1 and info.config.image_size == 32 and info.content_hash_version == 2
        assert fs.load().shape == (8, 512) and fs.class_names == ["blue", "red"]
    assert run_cli("cache", "verify", FSID, "--cache-dir", v1 / "cache").returncode == 0


def test_extracting_the_same_images_again_is_a_cache_hit_with_the_same_id(v1):
    hit = featcache.extract(v1 / "data", cache_dir=v1 / "cache", **SETTINGS)
    assert hit.cache_hit and hit.id == FSID


def test_a_fresh_extraction_writes_the_same_id_and_the_same_attributes(v1, tmp_path):
    fresh = featcache.extract(v1 / "data", cache_dir=tmp_path / "fresh", **SETTINGS)
    assert not fresh.cache_hit and fresh.id == FSID
    with h5py.File(v1 / "cache" / f"{FSID}.h5") as old, h5py.File(fresh.path) as new:
        assert set(old.attrs) == set(new.attrs)
        differ = {k for k in old.attrs if k not in MADE and str(old.attrs[k]) != str(new.attrs[k])}
        assert differ == set()
        assert set(old) == set(new) and set(old["manifest"]) == set(new["manifest"])


def test_the_old_run_loads_reports_and_predicts(v1):
    run = v1 / "runs" / "run"
    loaded = load_run(run)
    assert loaded.params.features.id == FSID and loaded.params.head == "logreg" and loaded.metrics.test.n == 2
    report = run_cli("report", run, "--runs-dir", v1 / "runs")
    assert report.returncode == 0, report.stderr
    assert (run / "report.html").is_file()
    labels = featcache.predict([v1 / "data" / "red"], run, cache_dir=v1 / "cache", progress_bar=False)
    assert [p.error for p in labels] == [None] * 4 and {p.label for p in labels} <= {"red", "blue"}
    again = run_cli("fit", "--head", "logreg", "--param", "C=1", "--cv", "2", "--test-size", "0.25", "--features", FSID,
                    "--cache-dir", v1 / "cache", "--runs-dir", v1 / "new-runs", "-q")
    assert again.returncode == 0, again.stderr
