"""Issue 15: labels beyond folders (a CSV, an unlabelled folder), and ids that stay what they were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.audit.findings import audit
from featcache.core.errors import CacheError, DataError
from featcache.extraction.scan import scan
from tests.conftest import featcache as run_cli
from tests.conftest import make_images
from tests.test_audit import CLASSES, scene

FAST = {"model": "resnet18", "weights": "none", "image_size": 32, "progress_bar": False}
MTIME_NS = 1_700_000_000_000_000_000


def make_ppm_folder(root: Path, classes=("cats", "dogs"), per_class: int = 3) -> Path:
    """Byte-for-byte reproducible images (raw PPM) with fixed modification times: a pinned manifest."""
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (np.arange(24 * 20 * 3, dtype=np.int64).reshape(20, 24, 3) * (k + 3) + i * 17) % 256
            path = root / cls / f"{cls}_{i}.ppm"
            path.write_bytes(b"P6\n24 20\n255\n" + pixels.astype(np.uint8).tobytes())
            os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return root


def test_existing_feature_set_ids_stay_the_same(tmp_path):
    """Content hashes and the labels machinery must not move the id of a folder-labelled set."""
    data = make_ppm_folder(tmp_path / "data")
    result = featcache.extract(data, cache_dir=tmp_path / "cache", **FAST)
    with result.open() as fs:
        assert fs.meta["manifest_sha256"] == "8bee7f9a421eb5d0ebb081a52378f48ba6508fd999577e2aeb24117dcd7a32cb"
        assert len(fs.manifest().content_hashes) == 6  # recorded beside the manifest, outside its hash
    assert result.id == "f46f69c762a04489"  # the id this folder had before content hashes and --labels existed


def _flat_folder(root: Path, per_colour: int = 5) -> Path:
    """Images without class folders; the colour says the 'true' class (red, green, blue)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for k, colour in enumerate(("red", "green", "blue")):
        for i in range(per_colour):
            pixels = rng.integers(0, 90, (40, 48, 3), dtype=np.uint8)
            pixels[..., k] += 150
            Image.fromarray(pixels).save(root / f"{colour}_{i}.png")
    return root


def _write_labels(path: Path, rows: list[tuple[str, ...]], header: str = "path,label,split") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def test_a_labels_file_labels_the_rows_enters_the_id_and_reports_what_it_leaves_out(tmp_path):
    data = _flat_folder(tmp_path / "photos")
    rows = [(f"{c}_{i}.png", c, "test" if i == 0 else "") for c in ("red", "green", "blue") for i in range(4)]
    rows.append(("gone.png", "red", ""))  # listed, not on disk: a skipped row with a reason
    labels = _write_labels(tmp_path / "labels.csv", rows)  # *_4.png are on disk but not listed
    cache = tmp_path / "cache"
    r = run_cli("extract", "--data", data, "--labels", labels, "--cache-dir", cache, "--model", "resnet18", "--weights", "none",
                "--image-size", "32", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert sorted(out["unlisted"]) == ["blue_4.png", "green_4.png", "red_4.png"]
    assert [s["path"] for s in out["skipped"]] == ["gone.png"] and "not found" in out["skipped"][0]["reason"]
    assert "left out 3 image(s)" in r.stderr and "labels.csv does not list" in r.stderr
    with featcache.open_features(out["id"], cache) as fs:
        assert fs.class_names == ["blue", "green", "red"]
        got = {p: (fs.class_names[k], s) for p, k, s in zip(fs.paths, fs.labels.tolist(), fs.split)}
        assert got["red_0.png"] == ("red", "test") and got["green_3.png"] == ("green", "") and len(got) == 12
        assert fs.meta["extract_args"]["labels"] == str(labels.resolve())

    again = featcache.extract(data, labels=labels, cache_dir=cache, **FAST)
    assert again.cache_hit and again.id == out["id"]  # the same labels: a cache hit
    same_content = tmp_path / "copy.csv"
    same_content.write_text(labels.read_text())
    assert featcache.extract(data, labels=same_content, cache_dir=cache, **FAST).id == out["id"]  # content, not the name
    flipped = _write_labels(tmp_path / "flipped.csv", [(p, "blue" if p == "red_1.png" else c, s) for p, c, s in rows])
    other = featcache.extract(data, labels=flipped, cache_dir=cache, **FAST)
    assert other.id != out["id"] and other.reused == 13 and other.extracted == 0  # new labels, the same rows (and skip)

    run = featcache.fit(head="logreg", features=out["id"], cache_dir=cache, runs_dir=tmp_path / "runs", cv=2,
                        params={"C": [1.0]}, progress_bar=False)
    assert run.params.split["test"] == "stored test split" and run.metrics.test.n == 3
    labels.write_text(flipped.read_text())  # the labels change under the feature set: fit says so
    with pytest.raises(CacheError, match=r"labels in .*labels.csv changed since extraction"):
        featcache.fit(head="logreg", features=out["id"], cache_dir=cache, runs_dir=tmp_path / "runs", cv=2, progress_bar=False)


@pytest.mark.parametrize("content,needle", [
    ("file,label\na.png,x\n", "no 'path' column"),
    ("path,label\na.png,x\na.png,y\n", "listed again with another label"),
    ("path,label,split\na.png,x,holdout\n", "unknown split 'holdout'"),
    ("path,label\n../a.png,x\n", "outside the data folder"),
    ("path,label\na.png,\n", "has no label"),
    ("path,label\n", "lists no images"),
])
def test_a_bad_labels_file_is_a_one_line_error_naming_the_problem(tmp_path, content, needle):
    data = _flat_folder(tmp_path / "photos", per_colour=1)
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=needle) as err:
        scan(data, tmp_path / "labels.csv")
    assert "\n" not in str(err.value)


def test_an_unlabelled_folder_is_extracted_audited_and_predicted_but_not_fitted(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(16):
        scene(CLASSES[i % 4], rng).save(data / f"scene_{i:02d}.png")
    shutil.copyfile(data / "scene_00.png", data / "scene_00_copy.png")
    cache = tmp_path / "cache"
    result = featcache.extract(data, cache_dir=cache, image_size=64, progress_bar=False)  # pretrained: distinct scenes differ
    with result.open() as fs:
        assert fs.class_names == [] and set(fs.labels.tolist()) == {-1} and len(fs) == 17
    found = audit(features=result.id, cache_dir=cache, progress_bar=False)
    groups = [sorted(found.entries.paths[e] for e in f.entries) for f in found.findings if f.kind.endswith("duplicate")]
    assert groups == [["scene_00.png", "scene_00_copy.png"]]
    assert not [f for f in found.findings if f.kind == "label_error"]
    data = _flat_folder(tmp_path / "more")
    r = run_cli("fit", "--features", result.id, "--cache-dir", cache, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert r.returncode == 1 and "has no labels" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    labelled = make_images(tmp_path / "labelled", classes=("red", "green", "blue"), per_class=6)
    fsid = featcache.extract(labelled, cache_dir=cache, **FAST).id
    run = featcache.fit(head="logreg", features=fsid, cache_dir=cache, runs_dir=tmp_path / "runs", cv=2, progress_bar=False)
    from_images = featcache.predict([data], run.path, cache_dir=cache, progress_bar=False)
    assert len(from_images) == 15 and all(p.label in ("red", "green", "blue") for p in from_images)
    unlabelled = featcache.extract(data, cache_dir=cache, **FAST).id  # the run's extractor: predict from the cache
    r = run_cli("predict", "--features", unlabelled, "--run", run.path, "--cache-dir", cache, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from_cache = {Path(p["path"]).name: p["label"] for p in json.loads(r.stdout)}
    assert from_cache == {Path(p.path).name: p.label for p in from_images}  # cache + head == extract + head
    r = run_cli("predict", "--features", result.id, "--run", run.path, "--cache-dir", cache, cwd=tmp_path)
    assert r.returncode == 1 and "another extractor" in r.stderr  # the pretrained scenes set: refused
