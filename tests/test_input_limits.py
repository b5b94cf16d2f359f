"""Issue 20: predict checks its files as extract does (a FIFO never blocks it, a broken link says
so), and --image-size has a bound, checked by one rule wherever the setting enters."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

import featcache
from featcache.backbones import resolve
from featcache.config.extract import MAX_IMAGE_SIZE, ExtractConfig
from featcache.core.errors import ModelError
from tests.conftest import featcache as run_cli
from tests.conftest import make_images


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-inputs")
    data = make_images(root / "data", classes=("red", "blue"), per_class=4, size=(32, 32))
    featcache.extract(data, model="resnet18", weights="none", image_size=32, cache_dir=root / "cache", progress_bar=False)
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=2, cache_dir=root / "cache", runs_dir=root / "runs",
                        progress_bar=False)
    return {"root": root, "run": run.path, "cache": root / "cache"}


def _new_images(folder):
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "good.png")
    os.mkfifo(folder / "x.jpg")  # opening it would block until a writer comes
    os.symlink("vanished.png", folder / "dangling.png")
    return folder


def test_predict_skips_a_fifo_and_a_broken_link_and_labels_the_rest(fitted, tmp_path):
    folder = _new_images(tmp_path / "new")
    # A subprocess, so that the unfixed code (which blocks on the FIFO forever) fails by its timeout
    # instead of hanging the suite.
    r = run_cli("predict", folder, folder / "x.jpg", "--run", fitted["run"], "--cache-dir", fitted["cache"], "--json", "-q",
                timeout=180)
    assert r.returncode == 0, r.stderr
    got = {os.path.relpath(p["path"], folder): p for p in json.loads(r.stdout)}
    assert set(got) == {"good.png", "x.jpg", "dangling.png"} and len(json.loads(r.stdout)) == 4  # x.jpg given twice
    assert got["good.png"]["label"] in ("red", "blue") and got["good.png"]["error"] is None
    assert got["x.jpg"]["label"] is None and got["x.jpg"]["error"] == "not a regular file"
    assert "broken symbolic link" in got["dangling.png"]["error"] and "vanished.png" in got["dangling.png"]["error"]
    assert "disappeared" not in r.stdout


def test_predict_lists_what_it_passed_over_in_a_folder(fitted, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    Image.new("RGB", (32, 32), "blue").save(folder / "good.png")
    os.symlink("..", folder / "up")
    results = featcache.predict([folder], fitted["run"], cache_dir=fitted["cache"], progress_bar=False)
    assert [os.path.basename(r.path) for r in results] == ["good.png", "up"]
    assert results[0].label in ("red", "blue") and "not followed" in results[1].error


# ------------------------------------------------------------------------------------ --image-size
@pytest.mark.parametrize("size,message", [
    (100000, f"--image-size 100000 is too large: featcache takes crops of at most {MAX_IMAGE_SIZE} pixels"),
    (MAX_IMAGE_SIZE + 1, "is too large"),
    (4, "is too small"),
    ("big", "is not a whole number"),
])
def test_image_size_out_of_bounds_is_refused_by_the_record(size, message):
    with pytest.raises(ModelError, match=message) as err:
        ExtractConfig(image_size=size)
    assert "\n" not in str(err.value)


def test_the_bound_itself_is_accepted_and_the_backbone_record_keeps_the_same_rule():
    assert ExtractConfig(image_size=MAX_IMAGE_SIZE).image_size == MAX_IMAGE_SIZE
    assert resolve("resnet18", weights="none", image_size=64).backbone.preprocess.crop_size == 64
    with pytest.raises(ModelError, match="too large"):
        resolve("resnet18", weights="none", image_size=MAX_IMAGE_SIZE + 1)


def test_the_python_api_and_the_sweep_refuse_it_before_any_work(tmp_path):
    missing = tmp_path / "no-such-folder"  # the size is checked before the folder is even looked at
    with pytest.raises(ModelError, match="too large"):
        featcache.extract(missing, model="resnet18", weights="none", image_size=100000, cache_dir=tmp_path / "c",
                          progress_bar=False)
    from featcache.sweeps.sweep import plan_from_options

    plan = plan_from_options(data=str(missing), models=["resnet18@none"], image_size=100000)
    assert not plan.features and any("--image-size 100000 is too large" in p for p in plan.problems)


@pytest.mark.parametrize("command", ["extract", "sweep"])
def test_the_cli_refuses_it_in_one_line(tmp_path, command):
    extra = ["--model", "resnet18"] if command == "sweep" else ["--model", "resnet18", "--weights", "none"]
    r = run_cli(command, "--data", tmp_path / "no-such-folder", *extra, "--image-size", "100000",
                "--cache-dir", tmp_path / "c", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "too large" in r.stderr and str(MAX_IMAGE_SIZE) in r.stderr


def test_help_states_the_bound():
    for command in ("extract", "sweep"):
        r = run_cli(command, "--help")
        assert f"8 to {MAX_IMAGE_SIZE} px" in " ".join(r.stdout.split())
