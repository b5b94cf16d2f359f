"""Issue 20: folder layouts read as what they are, directory links that duplicate nothing, and
featcache's own output folders never read as data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.core.errors import DataError
from featcache.core.files import CACHEDIR_SIGNATURE, CACHEDIR_TAG, OUTPUT_MARKER
from featcache.extraction.extract import ExtractResult, read_from
from featcache.extraction.scan import scan
from featcache.fitting.splits import make_split
from tests.conftest import featcache as run_cli
from tests.conftest import make_images, without_root_privileges

FAST = {"model": "resnet18", "weights": "none", "image_size": 32, "progress_bar": False}
CLI_FAST = ("--model", "resnet18", "--weights", "none", "--image-size", "32")


def _rows(manifest) -> dict[str, str]:
    return {p: manifest.class_names[k] for p, k in zip(manifest.paths, manifest.labels.tolist())}


def _tree(root: Path, files: list[str]) -> Path:
    """Tiny stand-in files (a scan stats, it does not decode) at the relative paths ``files``."""
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not decoded by a scan")
    return root


# ------------------------------------------------------------------------------------ split names
@pytest.mark.parametrize("names,splits", [
    (("training", "validation"), ("train", "val")),
    (("Train", "Valid", "Test"), ("train", "val", "test")),
    (("TRAINING", "dev", "eval"), ("train", "val", "test")),
    (("train", "testing"), ("train", "test")),
])
def test_split_folder_names_are_recognised_whatever_their_spelling(tmp_path, names, splits):
    data = tmp_path / "data"
    for k, name in enumerate(names):
        make_images(data, per_class=2 + k, split=name, seed=k)
    m = scan(data)
    assert m.class_names == ["cats", "dogs"]  # not the split folders' names
    for k, (name, split) in enumerate(zip(names, splits)):
        assert [s for p, s in zip(m.paths, m.splits) if p.startswith(name + "/")] == [split] * 2 * (2 + k)


def test_a_testing_folder_is_fits_test_set_and_validation_joins_cross_validation(tmp_path):
    data = tmp_path / "data"
    make_images(data, per_class=6, split="training")
    make_images(data, per_class=2, split="Validation", seed=1)
    make_images(data, per_class=3, split="testing", seed=2)
    m = scan(data)
    split = make_split(m.paths, m.labels, m.splits, m.paths, m.labels, m.class_names, cv=2)
    assert split.info["test"] == "stored test split"
    assert sorted(m.paths[i] for i in split.test_rows) == sorted(p for p in m.paths if p.startswith("testing/"))
    assert len(split.cv_rows) == 2 * (6 + 2)  # training and validation images, pooled for the CV


def test_a_labels_file_accepts_the_same_split_names(tmp_path):
    data = _tree(tmp_path / "data", ["a.png", "b.png", "c.png"])
    (tmp_path / "labels.csv").write_text("path,label,split\na.png,x,Training\nb.png,y,dev\nc.png,x,EVAL\n")
    m = scan(data, tmp_path / "labels.csv")
    assert dict(zip(m.paths, m.splits)) == {"a.png": "train", "b.png": "val", "c.png": "test"}


@pytest.mark.parametrize("folders,expected", [
    (["part1/cats/a.png", "part2/dogs/b.png"], ["every folder in", "part1/, part2/", "holds only subfolders", "--labels",
                                                "train, val or test"]),
    (["train/cats/a.png", "train/dogs/b.png", "extra/cats/c.png"], ["mixes split folders (train/)", "(extra/)", "--labels"]),
    (["train/cats/a.png", "train/dogs/b.png", "cats/c.png"], ["mixes split folders (train/)", "(cats/)"]),
    (["hymenoptera/train/ants/a.png", "hymenoptera/val/bees/b.png"], ["a single folder, hymenoptera/", "--data"]),
])
def test_a_layout_that_reads_two_ways_is_refused_with_the_fix(tmp_path, folders, expected):
    data = _tree(tmp_path / "data", folders)
    with pytest.raises(DataError) as err:
        scan(data)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_a_class_named_like_a_split_still_reads_as_a_class(tmp_path):
    data = _tree(tmp_path / "data", ["train/1.png", "train/2.png", "car/1.png", "bus/nested/1.png"])
    m = scan(data)
    assert m.class_names == ["bus", "car", "train"] and set(m.splits) == {""}


def test_images_beside_the_class_folders_are_listed_not_dropped(tmp_path):
    data = _tree(tmp_path / "data", ["cats/a.png", "dogs/b.png", "stray.png", "notes.txt"])
    m = scan(data)
    assert sorted(m.paths) == ["cats/a.png", "dogs/b.png"]
    assert [p for p, _ in m.left_out] == ["stray.png"] and "without a label" in m.left_out[0][1]
    split = _tree(tmp_path / "split", ["train/cats/a.png", "train/dogs/b.png", "train/loose.png"])
    assert [p for p, _ in scan(split).left_out] == ["train/loose.png"]


def test_extract_says_which_classes_and_splits_it_read(tmp_path):
    data = tmp_path / "data"
    make_images(data, classes=("ants", "bees"), per_class=2, split="training")
    make_images(data, classes=("ants", "bees"), per_class=1, split="validation", seed=1)
    result = featcache.extract(data, cache_dir=tmp_path / "cache", **FAST)
    assert result.summary().endswith("; 2 classes: ants, bees; splits: train 4, val 2")
    assert result.to_dict()["class_names"] == ["ants", "bees"]
    assert result.to_dict()["splits"] == {"train": 4, "val": 2}

    many = make_images(tmp_path / "many", classes=tuple(f"c{k:02d}" for k in range(12)), per_class=1)
    line = ExtractResult("id", Path("x.h5"), 12, (8,), **read_from(scan(many))).summary()
    assert line.endswith("; 12 classes: c00, c01, c02, c03, c04, ... (7 more)")
    flat = _tree(tmp_path / "flat", ["a.png"])
    assert ExtractResult("id", Path("x.h5"), 1, (8,), **read_from(scan(flat))).summary().endswith("; unlabelled (no class folders)")


def test_the_cli_refuses_a_nested_layout_in_one_line(tmp_path):
    data = make_images(tmp_path / "data", per_class=2, split="fold_a")
    make_images(data, per_class=2, split="fold_b")
    r = run_cli("extract", "--data", data, *CLI_FAST, "--cache-dir", tmp_path / "cache", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "fold_a/, fold_b/" in r.stderr and "--labels" in r.stderr
    assert not list((tmp_path / "cache").glob("*.h5"))


# ------------------------------------------------------------------------------------ directory links
def test_a_link_back_up_the_tree_reads_no_image_twice(tmp_path):
    data = _tree(tmp_path / "data", ["c1/a.png", "c2/b.png", "c2/deep/c.png"])
    os.symlink("..", data / "c1" / "up")
    os.symlink("../c2/deep", data / "c1" / "sideways")
    m = scan(data)
    assert _rows(m) == {"c1/a.png": "c1", "c2/b.png": "c2", "c2/deep/c.png": "c2"}
    reasons = dict(m.left_out)
    assert set(reasons) == {"c1/up", "c1/sideways"}
    assert all("inside the data folder: not followed" in r for r in reasons.values())


def test_a_link_out_of_the_tree_is_read_once(tmp_path):
    data = _tree(tmp_path / "data", ["c1/a.png", "c2/b.png"])
    outside = _tree(tmp_path / "outside", ["x.png", "sub/y.png"])
    os.symlink(outside, data / "c1" / "more")
    os.symlink(outside, data / "c2" / "again")  # the same folder under another class: it would duplicate rows
    os.symlink(outside / "sub", data / "c2" / "part")
    os.symlink(tmp_path, data / "c1" / "loop")  # holds the data folder itself
    m = scan(data)
    assert _rows(m) == {"c1/a.png": "c1", "c1/more/x.png": "c1", "c1/more/sub/y.png": "c1", "c2/b.png": "c2"}
    reasons = dict(m.left_out)
    assert "already read" in reasons["c2/again"] and "already read" in reasons["c2/part"]
    assert "holds the data folder" in reasons["c1/loop"]


def test_a_class_folder_that_is_a_link_out_of_the_tree_is_read(tmp_path):
    outside = _tree(tmp_path / "store", ["cats/a.png", "dogs/b.png"])
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(outside / "cats", data / "cats")
    os.symlink(outside / "dogs", data / "dogs")
    os.symlink("cats", data / "kitties")  # a second name for a class folder: not followed
    m = scan(data)
    assert _rows(m) == {"cats/a.png": "cats", "dogs/b.png": "dogs"}
    assert [p for p, _ in m.left_out] == ["kitties"]


def test_file_links_are_rows_and_a_broken_one_says_where_it_points(tmp_path):
    data = _tree(tmp_path / "data", ["c1/a.png", "c2/b.png"])
    os.symlink("../c2/b.png", data / "c1" / "copy.png")  # like a copy of the file: a row of its own
    os.symlink("gone.png", data / "c1" / "dangling.png")
    m = scan(data)
    assert _rows(m) == {"c1/a.png": "c1", "c1/copy.png": "c1", "c1/dangling.png": "c1", "c2/b.png": "c2"}
    problems = {m.paths[i]: why for i, why in m.unreadable.items()}
    assert list(problems) == ["c1/dangling.png"]
    assert "broken symbolic link" in problems["c1/dangling.png"] and "gone.png" in problems["c1/dangling.png"]


def _locked_tree(tmp_path) -> Path:
    data = make_images(tmp_path / "data", per_class=2, size=(24, 24))
    locked = data / "cats" / "locked"
    make_images(locked, classes=("inner",), per_class=1, size=(24, 24))
    os.chmod(locked, 0)
    return data


def test_an_unreadable_subfolder_is_reported_and_an_unreadable_class_folder_refused(tmp_path):
    prefix = without_root_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions do not apply, so nothing is unreadable")
    data = _locked_tree(tmp_path)
    try:
        r = run_cli("extract", "--data", data, *CLI_FAST, "--cache-dir", tmp_path / "cache", "--json", prefix=prefix)
        assert r.returncode == 0, r.stderr
        left_out = {e["path"]: e["reason"] for e in json.loads(r.stdout)["left_out"]}
        assert left_out == {"cats/locked": "cannot list folder: permission denied"}
        assert "cats/locked: cannot list folder: permission denied" in r.stderr
        os.chmod(data / "dogs", 0)
        r = run_cli("extract", "--data", data, *CLI_FAST, "--cache-dir", tmp_path / "cache", "-q", prefix=prefix)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
        assert "dogs" in r.stderr and "permission denied" in r.stderr and "holds no images" not in r.stderr
    finally:
        os.chmod(data / "cats" / "locked", 0o755)
        os.chmod(data / "dogs", 0o755)


def test_a_folder_that_cannot_be_listed_is_reported_in_process(tmp_path, monkeypatch):
    """The same rule without a second process: listing the folder raises PermissionError, as it would
    for a user without the right to read it (permissions do not apply to root)."""
    data = _locked_tree(tmp_path)
    os.chmod(data / "cats" / "locked", 0o755)
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).name in ("locked", "dogs") and os.environ.get("LOCK") in (Path(os.fsdecode(path)).name, "all"):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setenv("LOCK", "locked")
    m = scan(data)
    assert m.left_out == [("cats/locked", "cannot list folder: permission denied")]
    assert "cats/locked/inner/inner_000.png" not in m.paths and len(m) == 4
    monkeypatch.setenv("LOCK", "dogs")
    with pytest.raises(DataError, match=r"cannot list folder .*dogs: permission denied; make it readable"):
        scan(data)


# ------------------------------------------------------------------------------------ own outputs
def test_featcache_output_folders_inside_the_data_are_never_read(tmp_path):
    data = make_images(tmp_path / "data", per_class=4, size=(24, 24))
    before = scan(data)
    featcache.extract(data, cache_dir=data / "features", **FAST)
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=2, cache_dir=data / "features", runs_dir=data / "runs",
                        progress_bar=False)
    from featcache.fitting import report

    report.render_comparison([run, run], data / "compare")
    assert (data / "features" / CACHEDIR_TAG).read_bytes().startswith(CACHEDIR_SIGNATURE)
    for folder in (data / "features", data / "runs", run.path, data / "compare"):
        assert (folder / OUTPUT_MARKER).is_file(), folder
    assert any(p.suffix == ".png" for p in run.path.rglob("*"))  # plots a scan would have read as images
    after = scan(data)
    assert after.sha256 == before.sha256 and after.paths == before.paths
    assert {p for p, _ in after.left_out} == {"compare", "features", "runs"}


def test_output_folders_of_older_versions_are_recognised_by_their_files(tmp_path):
    data = make_images(tmp_path / "data", per_class=2, size=(24, 24))
    before = scan(data)
    _tree(data, ["runs/20240101-svm-ab/params.json", "runs/20240101-svm-ab/checksums.json", "runs/20240101-svm-ab/plots/cm.png",
                 "audit/audit.csv", "audit/audit.html", "audit/thumbs/t.jpg",
                 "cats/sweep-1/sweep.json", "cats/sweep-1/leaderboard.png",
                 "dogs/cached/CACHEDIR.TAG", "dogs/cached/x.png"])
    (data / "dogs" / "cached" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n")
    _tree(data, ["dogs/not-a-cache/CACHEDIR.TAG", "dogs/not-a-cache/y.png"])  # no signature: an ordinary folder
    after = scan(data)
    assert after.paths == sorted(before.paths + ["dogs/not-a-cache/y.png"])
    reasons = dict(after.left_out)
    assert set(reasons) == {"runs", "audit", "cats/sweep-1", "dogs/cached"}
    assert "older version" in reasons["runs"] and "audit.csv" in reasons["audit"] and "CACHEDIR.TAG" in reasons["dogs/cached"]


def test_extract_in_the_image_folder_then_fit_stays_fresh(tmp_path):
    """The issue's session: `extract --data .` inside the image folder, `fit` (which writes ./runs), then
    the same extract again: a cache hit on the same set, never a class named runs."""
    data = make_images(tmp_path / "photos", per_class=4, size=(24, 24))
    first = run_cli("extract", "--data", ".", *CLI_FAST, "--json", "-q", cwd=data)
    assert first.returncode == 0, first.stderr
    fit = run_cli("fit", "--head", "logreg", "--param", "C=1", "--cv", "2", "-q", cwd=data)
    assert fit.returncode == 0, fit.stderr
    assert (data / "runs" / OUTPUT_MARKER).is_file()
    again = run_cli("extract", "--data", ".", *CLI_FAST, "--json", "-q", cwd=data)
    assert again.returncode == 0, again.stderr
    first, again = json.loads(first.stdout), json.loads(again.stdout)
    assert again["id"] == first["id"] and again["cache_hit"] and again["class_names"] == ["cats", "dogs"]
    refit = run_cli("fit", "--head", "logreg", "--param", "C=1", "--cv", "2", cwd=data)
    assert refit.returncode == 0 and "stale" not in refit.stderr, refit.stderr


def test_a_cache_inside_the_data_folder_itself_is_no_class_and_the_folder_still_reads(tmp_path):
    """`--cache-dir` naming the image folder itself marks it as an output folder; --data names it
    explicitly, so it is still read (its feature-set files are not images)."""
    data = make_images(tmp_path / "data", per_class=3, size=(24, 24))
    first = featcache.extract(data, cache_dir=data, **FAST)
    again = featcache.extract(data, cache_dir=data, **FAST)
    assert (data / OUTPUT_MARKER).is_file() and not (data / CACHEDIR_TAG).exists()  # the user's folder: not tagged
    assert again.cache_hit and again.id == first.id and again.class_names == ["cats", "dogs"]


def test_scan_rows_are_unchanged_for_a_plain_folder(tmp_path):
    """The walk that replaced os.walk keeps every row of an ordinary tree, nested folders included."""
    data = make_images(tmp_path / "data", per_class=2, size=(24, 24))
    make_images(data / "cats" / "2019", classes=("more",), per_class=2, size=(24, 24))
    m = scan(data)
    expected = sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))
    assert m.paths == expected and m.left_out == []
    assert np.array_equal(m.labels, [0, 0, 0, 0, 1, 1])
