"""Issue 9: ``featcache sweep``: every row, shared folds, cache hits on rerun, resume, validation."""

from __future__ import annotations

import csv
import json
import signal
import subprocess

import pytest

import featcache
from featcache import backbones
from featcache.core.errors import FeatcacheError
from featcache.fitting import pipeline
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

ARGS = ["--model", "resnet18@none", "--model", "mobilenet_v3_small@none", "--head", "svm", "--head", "logreg",
        "--param", "svm.C=0.1,1", "--param", "logreg.C=1", "--image-size", "48", "--cv", "3", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("sweep") / "data", classes=("a", "b", "c"), per_class=9, size=(48, 48))


def _rows(out):
    with open(out / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def test_sweep_fits_every_row_on_identical_folds_and_reruns_as_cache_hits(data, tmp_path, monkeypatch):
    out, cache = tmp_path / "sw", tmp_path / "cache"
    r = run_cli("sweep", "--data", data, *ARGS, "--out", out, "--cache-dir", cache)
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert {(row["model"], row["head"]) for row in rows} == {(m, h) for m in ("resnet18", "mobilenet_v3_small") for h in ("svm", "logreg")}
    assert [float(row["cv_mean"]) for row in rows] == sorted((float(row["cv_mean"]) for row in rows), reverse=True)
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.png", "sweep.json"):
        assert (out / name).is_file()
    assert "**best**" in (out / "leaderboard.md").read_text() and "paired t-test" in (out / "leaderboard.md").read_text()
    params = [json.loads((out / row["run"] / "params.json").read_text()) for row in rows]
    assert len({p["split"]["assignment_sha256"] for p in params}) == 1  # same test images and folds in every row
    tests = {(out / row["run"] / "test_predictions.csv").read_text().count("\n") for row in rows}
    assert len(tests) == 1
    stamps = {row["run"]: (out / row["run"] / "checksums.json").stat().st_mtime_ns for row in rows}

    def forbidden(*a, **k):
        raise AssertionError("a rerun must not load a model or refit a head")

    monkeypatch.setattr(backbones, "build", forbidden)
    monkeypatch.setattr(pipeline, "fit", forbidden)
    again = featcache.sweep(data=data, models=["resnet18@none", "mobilenet_v3_small@none"], heads=["svm", "logreg"],
                            params=["svm.C=0.1,1", "logreg.C=1"], image_size=48, cv=3, out=out, cache_dir=cache, progress_bar=False)
    state = json.loads((again / "sweep.json").read_text())
    assert all(row["reused"] for row in state["rows"].values()) and len(state["rows"]) == 4
    assert stamps == {row["run"]: (out / row["run"] / "checksums.json").stat().st_mtime_ns for row in _rows(out)}
    rendered = run_cli("report", out)
    assert rendered.returncode == 0 and "leaderboard.html" in rendered.stdout


def test_a_killed_sweep_resumes_and_does_only_the_rest(data, tmp_path, background):
    out, cache = tmp_path / "sw", tmp_path / "cache"
    # The first feature set is already cached, so the sweep's first committed batch belongs to the
    # second one: stopped there, both rows of the first feature set are finished and none of the second.
    first_set = featcache.extract(data, model="resnet18", weights="none", image_size=48, cache_dir=cache, progress_bar=False)
    proc = background.start("sweep", "--data", data, *ARGS, "--out", out, "--cache-dir", cache, pause_after=1,
                            marker=tmp_path / "paused", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/checksums.json")}
    assert sorted(first) == [f"{first_set.id[:10]}-logreg", f"{first_set.id[:10]}-svm"]
    assert len(list(cache.glob("*.h5"))) == 1 and len(list(cache.glob("*.partial/seg-*.json"))) == 1
    r = run_cli("sweep", "--data", data, *ARGS, "--out", out, "--cache-dir", cache)
    assert r.returncode == 0, r.stderr
    assert len(_rows(out)) == 4 and not list(cache.glob("*.partial"))
    for name, stamp in first.items():
        assert (out / "runs" / name / "checksums.json").stat().st_mtime_ns == stamp  # finished rows were not refitted


def test_every_bad_sweep_input_is_named_before_any_work(data, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli("sweep", "--data", data, "--model", "resnet18@none", "--model", "vgg16@none", "--model", "resnet81",
                "--layer", "layer4", "--head", "svm", "--head", "svn", "--param", "svm.Cx=1", "--param", "logreg.C=1",
                "--cache-dir", cache, "--out", tmp_path / "sw", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1
    for needle in ("unknown model 'resnet81'", "vgg16@none layer4", "unknown layer 'layer4'", "unknown head 'svn'",
                   "'Cx'", "logreg.C=1"):
        assert needle in err, needle
    assert not cache.exists() or not any(cache.iterdir())  # nothing was extracted
    with pytest.raises(FeatcacheError, match="gap head needs spatial maps"):
        featcache.sweep(data=data, models=["resnet18@none"], pools=["avg"], heads=["gap"], cache_dir=cache, out=tmp_path / "g")


def test_sweep_from_a_toml_file(data, tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f'''data = "{data}"
cv = 3
[[features]]
model = "resnet18"
weights = "none"
image_size = 48
layers = ["layer3", "layer4"]
pools = ["avg"]
[heads.logreg]
C = [1.0]
''')
    r = run_cli("sweep", "--config", cfg, "--out", tmp_path / "sw", "--cache-dir", tmp_path / "c", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(row["layer"] for row in _rows(tmp_path / "sw")) == ["layer3", "layer4"]
    assert (tmp_path / "sw" / ".featcache-output").is_file()  # a scan never reads a sweep as data
    for row in json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"].values():  # the file's data, not ./data
        with featcache.open_features(row["feature_set"], tmp_path / "c") as fs:
            assert fs.meta["data_root"] == str(data.resolve()) and len(fs) == 27


def test_one_leaderboard_mixes_a_cnn_map_a_vit_embedding_and_a_clip_tower(data, tmp_path):
    """Issue 13: each row at its own default cut and input size, with its extraction cost."""
    models = ["resnet18@none", "timm:test_vit@none", "openclip:ViT-S-32-alt@none"]
    r = run_cli("sweep", "--data", data, *[a for m in models for a in ("--model", m)], "--head", "logreg",
                "--param", "logreg.C=1", "--cv", "3", "--out", tmp_path / "sw", "--cache-dir", tmp_path / "cache", "-q")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in _rows(tmp_path / "sw")}
    assert {m: (row["layer"], row["pool"]) for m, row in rows.items()} == {
        "resnet18": ("layer4", "none"), "timm:test_vit": ("pre_logits", "none"), "openclip:ViT-S-32-alt": ("encode_image", "none")}
    assert all(float(row["extract_images_per_second"]) > 0 and row["weights"] == "none" for row in rows.values())
    assert float(rows["resnet18"]["feature_mb"]) > 10 * float(rows["timm:test_vit"]["feature_mb"])  # 512x7x7 maps vs 64-d
