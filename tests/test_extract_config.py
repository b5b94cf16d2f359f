"""Issue 12: one extraction record, and the silent-wrong results it ends.

Each test here failed on the code before the record: the sweep file's data was ignored, the sweep's
--cv/--seed/--test-size/--image-size were dropped beside --config, the printed refresh command built
a new feature set instead of updating the stale one, a failed torch.compile was recorded as
``compiled``, and --seed never reached the heads.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.core.errors import FeatcacheError
from featcache.fitting import pipeline
from tests.conftest import cli_env, featcache_command, make_images
from tests.conftest import featcache as run_cli

FAST = {"model": "resnet18", "weights": "none", "image_size": 32, "progress_bar": False}


def test_the_record_round_trips_and_rejects_bad_values():
    from featcache.config.extract import ExtractConfig

    cfg = ExtractConfig(data="photos", model="resnet50", pool="avg", dtype="float32", precision="bf16", draft=False,
                        batch_size="16", workers="0", streams="auto", shard="1/4")
    assert cfg.batch_size == 16 and cfg.workers == 0 and cfg.streams == "auto" and cfg.shard == (1, 4)
    assert ExtractConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ExtractConfig.from_dict({"model": "vgg16", "draft": False, "unknown_old_key": 1}).model == "vgg16"
    for bad, needle in (({"dtype": "int8"}, "dtype"), ({"batch_size": 0}, "--batch-size"), ({"workers": "x"}, "--workers"),
                        ({"shard": "4/4"}, "--shard"), ({"engine": "spark"}, "engine"), ({"precision": "fp8"}, "precision")):
        with pytest.raises(FeatcacheError, match=needle):
            ExtractConfig(**bad)
    with pytest.raises(TypeError, match="unknown extraction setting"):
        featcache.extract("data", modle="resnet18")


def test_the_refresh_command_updates_the_stale_set_in_place(tmp_path):
    """Every setting that enters the id is in the printed command: following it reuses the old rows."""
    data = make_images(tmp_path / "data", per_class=6)
    cache = tmp_path / "cache"
    first = featcache.extract(data, cache_dir=cache, pool="avg", dtype="float32", draft=False, precision="bf16", **FAST)
    Image.new("RGB", (40, 40), "white").save(data / "cats" / "late.png")
    r = run_cli("fit", "--cache-dir", cache, "--runs-dir", tmp_path / "runs", "-q", cwd=tmp_path)
    assert r.returncode == 1 and "stale" in r.stderr
    command = r.stderr.split("refresh it with `", 1)[1].split("`", 1)[0]
    for needle in ("--no-draft", "--precision bf16", "--dtype float32", "--pool avg", "--image-size 32", "--weights none"):
        assert needle in command, command
    argv = shlex.split(command)
    assert argv[:2] == ["featcache", "extract"]
    refreshed = subprocess.run(featcache_command() + argv[1:] + ["--json"], capture_output=True, text=True,
                               env=cli_env(), cwd=tmp_path, timeout=600)
    assert refreshed.returncode == 0, refreshed.stderr
    out = json.loads(refreshed.stdout)
    assert out["reused"] == 12 and out["extracted"] == 1 and out["id"] != first.id
    with first.open() as old, featcache.open_features(out["id"], cache) as new:
        assert new.meta["config_id"] == old.meta["config_id"]  # the same extractor: an update, not a new set
        assert len(new) == 13


def test_a_sweep_file_data_and_the_cli_options_beside_it_are_honoured(tmp_path):
    """The file's data is used (relative to the file), and --cv/--seed/--test-size/--image-size override it."""
    data = make_images(tmp_path / "elsewhere" / "photos", classes=("a", "b", "c"), per_class=6, size=(40, 40))
    conf = tmp_path / "elsewhere" / "sweep.toml"
    conf.write_text('data = "photos"\ncv = 2\nseed = 1\ntest_size = 0.5\n[[features]]\nmodel = "resnet18"\n'
                    'weights = "none"\nimage_size = 48\n[heads.logreg]\nC = [1.0]\n')
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()  # no ./data here: only the file's data can be used
    r = run_cli("sweep", "--config", conf, "--cv", "3", "--seed", "7", "--image-size", "32", "--out", tmp_path / "sw",
                "--cache-dir", tmp_path / "cache", "-q", cwd=run_dir)
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert state["plan"]["data"] == str(data.resolve())
    assert state["plan"]["cv"] == 3 and state["plan"]["seed"] == 7 and state["plan"]["test_size"] == 0.5
    assert state["plan"]["features"][0]["image_size"] == 32
    row = next(iter(state["rows"].values()))
    params = json.loads((tmp_path / "sw" / row["run"] / "params.json").read_text())
    assert params["cv"] == 3 and params["seed"] == 7 and params["features"]["preprocess"]["crop_size"] == 32
    # Without options the file's values hold.
    from featcache.sweeps.sweep import plan_from_toml

    plan = plan_from_toml(conf)
    assert (plan.cv, plan.seed, plan.test_size, plan.features[0].image_size) == (2, 1, 0.5, 48)
    assert plan.data == str(data)


def test_a_failed_compile_is_recorded_as_not_compiled(tmp_path, monkeypatch):
    import torch

    class Broken(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            raise RuntimeError("no compiler here (planted)")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    data = make_images(tmp_path / "data", per_class=3)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        result = featcache.extract(data, cache_dir=tmp_path / "c", compile=True, batch_size=4, **FAST)
    with result.open() as fs:
        assert fs.meta["compiled"] is False
        assert "planted" in fs.meta["compile_error"]
        assert fs.meta["extract_args"]["compile"] is True  # what was asked stays recorded beside what ran


def test_seed_reaches_the_heads(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    result = featcache.extract(data, cache_dir=tmp_path / "c", **FAST)
    runs = [featcache.fit(head=head, features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=2, seed=5,
                          params=grid, head_params=fixed, progress_bar=False)
            for head, grid, fixed in (("svm", {"C": [1.0]}, None), ("mlp", {}, {"max_epochs": 2}))]
    assert all(run.params.head_params["random_state"] == 5 for run in runs)
    fixed = featcache.fit(head="svm", features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=2, seed=5,
                          params={"C": [1.0]}, head_params={"random_state": 2}, progress_bar=False)
    assert fixed.params.head_params["random_state"] == 2  # an explicit value wins


def test_a_head_failure_keeps_its_cause(tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", per_class=6)
    result = featcache.extract(data, cache_dir=tmp_path / "c", **FAST)

    def broken(*args, **kwargs):
        raise ValueError("planted solver failure")

    monkeypatch.setattr(pipeline, "grid_search", broken)
    with pytest.raises(FeatcacheError, match="planted solver failure") as info:
        featcache.fit(features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=2, progress_bar=False)
    assert isinstance(info.value.__cause__, ValueError)


def test_predict_rebuilds_the_extractor_from_the_stored_record(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    result = featcache.extract(data, cache_dir=tmp_path / "c", pool="avg", draft=False, **FAST)
    run = featcache.fit(head="logreg", features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=2,
                        params={"C": [1.0]}, progress_bar=False)
    images = sorted(data.rglob("*.png"))[:3]
    with result.open() as fs:
        rows = {p: i for i, p in enumerate(fs.paths)}
        X = fs.load(np.float32)
    predicted = featcache.predict(images, run.path, cache_dir=tmp_path / "c", progress_bar=False)
    head = run.head()
    for image, p in zip(images, predicted):
        row = X[rows[str(image.relative_to(data))]][None]
        assert p.label == run.params.class_names[int(head.predict(row)[0])]
