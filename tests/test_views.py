"""Issue 14: augmented views in the feature set, test-time averaging, and every guarantee per image."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.config.extract import ExtractConfig
from featcache.config.views import Views, ViewsError
from featcache.core.errors import FeatcacheError
from featcache.fitting.evaluation import ImageScorer, aggregate
from featcache.fitting.pipeline import load_features
from featcache.fitting.splits import make_split
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

FAST = dict(model="resnet18", weights="none", image_size=32, progress_bar=False, batch_size=4)
SWEEP_FAST = ["--model", "resnet18@none", "--image-size", "32"]
CLI_FAST = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    return make_images(root / "data", classes=("a", "b", "c"), per_class=8, size=(72, 56))


def _rows(result):
    with result.open() as fs:
        return fs.load(np.float32), fs.paths, fs.labels, fs.view, fs.meta


# ------------------------------------------------------------------------------------ the recipe
def test_recipes_parse_to_one_spelling_and_bad_ones_are_one_line():
    assert str(Views.parse("rrc:8")) == "rrc:8:seed=0:scale=0.25" == str(Views.parse(" RRC:8:scale=0.25:seed=0 "))
    assert [Views.parse(s).count for s in ("none", "flip", "crops:5", "crops:10", "rrc:3")] == [1, 2, 5, 10, 3]
    assert Views.parse("none").key() is None and Views.parse("rrc:4:seed=2").key()["seed"] == 2
    for bad in ("flop", "crops:4", "rrc", "rrc:1", "rrc:8:seed=-1", "rrc:8:scale=2", "flip:2", "rrc:8:colour=1"):
        with pytest.raises(ViewsError):
            Views.parse(bad)
    assert ExtractConfig(views="rrc:4").views == "rrc:4:seed=0:scale=0.25"
    with pytest.raises(FeatcacheError, match="unknown views recipe"):
        ExtractConfig(views="bogus")
    with pytest.raises(FeatcacheError, match="--decode gpu does not support it"):
        ExtractConfig(views="flip", decode="gpu")
    assert "views" not in ExtractConfig().identity() and ExtractConfig(views="flip").identity()["views"] == "flip"
    assert "--views crops:5" in ExtractConfig(views="crops:5").command()


def test_random_crops_depend_on_the_seed_and_the_files_bytes_only(tmp_path):
    from featcache.backbones.spec import Preprocess
    from featcache.config.decode import Decode
    from featcache.extraction.decode import Transform

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    shutil.copy(tmp_path / "x.jpg", tmp_path / "copy-elsewhere.jpg")
    p = Preprocess(resize_size=40, crop_size=32)
    make = lambda spec: Transform(p, views=spec)  # noqa: E731
    a = make("rrc:6")(str(tmp_path / "x.jpg"))
    assert a.shape == (6, 3, 32, 32) and str(a.dtype) == "torch.uint8"
    assert np.array_equal(a, make("rrc:6")(str(tmp_path / "copy-elsewhere.jpg")))  # any path, any worker
    assert np.array_equal(a, make("rrc:6")(io.BytesIO((tmp_path / "x.jpg").read_bytes())))
    # view 0: the plain crop (of an image JPEG-drafted no smaller than the smallest random crop needs)
    assert np.array_equal(a[0], Transform(p, Decode(draft=False))(str(tmp_path / "x.jpg")))
    assert len({a[k].numpy().tobytes() for k in range(6)}) == 6
    assert not np.array_equal(a[1:], make("rrc:6:seed=1")(str(tmp_path / "x.jpg"))[1:])
    flip = make("flip")(str(tmp_path / "x.jpg"))
    assert np.array_equal(flip[1], flip[0].flip(-1))
    ten = make("crops:10")(str(tmp_path / "x.jpg"))
    assert np.array_equal(ten[0], flip[0]) and np.array_equal(ten[5:], ten[:5].flip(-1))


# ------------------------------------------------------------------------- rows tied to images
def test_each_view_is_a_row_of_its_image_and_ids_are_stable(data, tmp_path):
    (data / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    try:
        plain = featcache.extract(data, cache_dir=tmp_path / "c", **FAST)
        with_views = {spec: featcache.extract(data, cache_dir=tmp_path / "c", views=spec, **FAST)
                      for spec in ("flip", "crops:5", "rrc:3")}
        again = featcache.extract(data, cache_dir=tmp_path / "c", views="rrc:3", **FAST)
        fresh = featcache.extract(data, cache_dir=tmp_path / "fresh", views="rrc:3", batch_size=6, workers=2,
                                  **{k: v for k, v in FAST.items() if k != "batch_size"})
    finally:
        (data / "b" / "broken.jpg").unlink()
    X0, paths0, y0, view0, meta0 = _rows(plain)
    assert meta0["n_views"] == 1 and not view0.any() and "views" not in meta0["key"]
    assert len({plain.id} | {r.id for r in with_views.values()}) == 4
    for spec, result in with_views.items():
        n = Views.parse(spec).count
        X, paths, y, view, meta = _rows(result)
        assert len(X) == 24 * n and result.n_rows == 24 * n and meta["n_views"] == n and meta["key"]["views"]["n"] == n
        assert np.array_equal(view, np.tile(np.arange(n), 24))
        assert paths[::n] == paths0 and all(paths[k] == paths[k - k % n] for k in range(len(paths)))
        assert np.array_equal(y[::n], y0) and np.array_equal(y, np.repeat(y0, n))
        assert result.skipped == plain.skipped == [("b/broken.jpg", "not an image Pillow can read (unknown format or corrupt header)")]
        if spec != "rrc:3":  # same decode as without views: view 0 is the plain crop's features
            np.testing.assert_allclose(X[::n], X0, rtol=1e-2, atol=1e-3)
    assert again.cache_hit and again.id == with_views["rrc:3"].id
    # another cache, batch size and worker count: the same id and the same rows
    assert fresh.id == again.id
    np.testing.assert_allclose(_rows(fresh)[0], _rows(again)[0], rtol=1e-2, atol=1e-3)
    assert _rows(fresh)[1] == _rows(again)[1]
    assert run_cli("cache", "verify", "--cache-dir", tmp_path / "c").returncode == 0


def test_no_image_has_views_on_both_sides_of_a_fold_or_the_test_split(data, tmp_path):
    result = featcache.extract(data, cache_dir=tmp_path / "c", views="crops:5", **FAST)
    d = load_features(result.id, tmp_path / "c", say=False)
    split = make_split(*d.manifest, d.paths, d.y, d.class_names, cv=4, seed=3, row_views=d.views)
    paths = np.array(d.paths)
    test, cv = set(paths[split.test_rows]), set(paths[split.cv_rows])
    assert test and cv and not test & cv
    assert split.info["n_test"] == len(test) and split.info["n_cv"] == len(cv) and split.info["dropped"] == 0
    for train, valid in split.folds:
        tr, va = set(paths[split.cv_rows][train]), set(paths[split.cv_rows][valid])
        assert not tr & va and len(valid) == 5 * len(va)
    # rows of one image stay together and in view order on every side, so scoring can group them
    for rows in [split.test_rows] + [split.cv_rows[v] for _, v in split.folds]:
        assert np.array_equal(d.views[rows], np.tile(np.arange(5), len(rows) // 5))
        assert (paths[rows].reshape(-1, 5) == paths[rows][::5, None]).all()
    # the same files as a set without views
    plain = load_features(featcache.extract(data, cache_dir=tmp_path / "c", **FAST).id, tmp_path / "c", say=False)
    split0 = make_split(*plain.manifest, plain.paths, plain.y, plain.class_names, cv=4, seed=3)
    assert set(np.array(plain.paths)[split0.test_rows]) == test
    assert split0.info["assignment_sha256"] == split.info["assignment_sha256"]


# ----------------------------------------------------------------------- fit and test-time views
@pytest.mark.parametrize("head", ["logreg", "svm"])
def test_test_time_averaging_equals_averaging_the_heads_outputs_by_hand(data, tmp_path, head):
    result = featcache.extract(data, cache_dir=tmp_path / "c", views="flip", pool="avg", **FAST)
    run = featcache.fit(head=head, features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=3,
                        params={"C": [0.1, 10.0]}, progress_bar=False)
    d = load_features(result.id, tmp_path / "c", say=False)
    split = make_split(*d.manifest, d.paths, d.y, d.class_names, cv=3, seed=0, row_views=d.views)
    model = run.head()
    X, y = d.X[split.test_rows], d.y[split.test_rows]
    out = model.predict_proba(X) if head == "logreg" else model.decision_function(X)
    averaged = out.reshape(len(X) // 2, 2, -1).mean(axis=1)
    by_hand = model.classes_[averaged.argmax(axis=1)]
    if head == "svm":  # the confidence of averaged decision values: their softmax
        averaged = np.exp(averaged - averaged.max(axis=1, keepdims=True))
        averaged /= averaged.sum(axis=1, keepdims=True)
    first = model.predict(X[::2])
    m = run.metrics
    assert m.test.n == len(X) // 2 and run.params.views_at_test == "mean"
    assert m.test.accuracy == pytest.approx(np.mean(by_hand == y[::2]))
    assert m.views["test_accuracy"] == {"mean": pytest.approx(np.mean(by_hand == y[::2])),
                                        "first": pytest.approx(np.mean(first == y[::2]))}
    with open(run.path / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == list(np.array(d.paths)[split.test_rows][::2])
    assert [r["predicted"] for r in rows] == [d.class_names[k] for k in by_hand]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], averaged.max(axis=1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged.max(axis=1), (model.predict_proba(X[::2]) if head == "logreg" else
                                                   np.exp(model.decision_function(X[::2])) / np.exp(model.decision_function(X[::2])).sum(1, keepdims=True)).max(axis=1))
    # each fold was scored per image with the same rule
    train, valid = split.folds[0]
    best = run.metrics.best_params
    fold_model = type(model)(**{**model.get_params(), **best}).fit(d.X[split.cv_rows][train], d.y[split.cv_rows][train])
    Xv, yv = d.X[split.cv_rows][valid], d.y[split.cv_rows][valid]
    fold_out = fold_model.predict_proba(Xv) if head == "logreg" else fold_model.decision_function(Xv)
    fold_hand = np.mean(fold_model.classes_[fold_out.reshape(len(Xv) // 2, 2, -1).mean(axis=1).argmax(axis=1)] == yv[::2])
    assert m.cv_results["split0_test_score"][m.best_index] == pytest.approx(fold_hand)
    report = (run.path / "report.md").read_text()
    assert "## Views" in report and "mean over the 2 views" in report and "view 0 only" in report


def test_views_at_test_first_scores_view_zero_and_the_cli_says_both(data, tmp_path):
    cache = tmp_path / "c"
    r = run_cli("extract", "--data", data, *CLI_FAST, "--pool", "avg", "--views", "flip", "--cache-dir", cache, "-q", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["views"] == 2 and json.loads(r.stdout)["rows"] == 48
    fit = run_cli("fit", "--head", "logreg", "--param", "C=1", "--cv", "3", "--views-at-test", "first",
                  "--cache-dir", cache, "--runs-dir", tmp_path / "r", "-q")
    assert fit.returncode == 0, fit.stderr
    assert "first of 2 views (flip); mean:" in fit.stdout
    bad = run_cli("extract", "--data", data, "--views", "rrc:0", "--cache-dir", cache)
    assert bad.returncode == 1 and "rrc takes 2 to 64 views" in bad.stderr and "Traceback" not in bad.stderr
    gpu = run_cli("extract", "--data", data, "--views", "flip", "--decode", "gpu", "--cache-dir", cache)
    assert gpu.returncode == 1 and "--decode gpu does not support it" in gpu.stderr


def test_image_scorer_refuses_rows_that_are_not_whole_images():
    from classifiers import get_head

    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 4)
    head = get_head("logreg")(C=1.0).fit(X, y)
    assert ImageScorer(2)(head, X, y) == np.mean(aggregate(head, X, 2)[0] == y[::2])
    with pytest.raises(ViewsError, match="whole images"):
        ImageScorer(5)(head, X, y)
    with pytest.raises(ViewsError, match="different labels"):
        ImageScorer(4)(head, X[2:10], y[2:10])


def test_predict_cuts_the_same_views_and_equals_extract_plus_head(data, tmp_path):
    result = featcache.extract(data, cache_dir=tmp_path / "c", views="rrc:3", pool="avg", **FAST)
    run = featcache.fit(head="logreg", features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=3,
                        params={"C": [1.0]}, progress_bar=False)
    d = load_features(result.id, tmp_path / "c", say=False)
    model = run.head()
    files = [str(data / p) for p in d.paths[::3]]
    expected_labels, expected_conf = aggregate(model, d.X, 3, "mean")
    predicted = featcache.predict(files, run.path, cache_dir=tmp_path / "c", progress_bar=False, batch_size=5)
    assert [p.label for p in predicted] == [d.class_names[k] for k in expected_labels]
    np.testing.assert_allclose([p.confidence for p in predicted], expected_conf, rtol=1e-3, atol=1e-4)
    # a copy of a training image somewhere else gets the same views (they follow the bytes, not the path)
    shutil.copy(files[0], tmp_path / "elsewhere.png")
    again = featcache.predict([tmp_path / "elsewhere.png"], run.path, cache_dir=tmp_path / "c", progress_bar=False)
    assert again[0].label == predicted[0].label and again[0].confidence == pytest.approx(predicted[0].confidence, rel=1e-3)


# ------------------------------------------------------------------ resume, shards, incremental
def test_kill_9_then_resume_with_views_equals_an_uninterrupted_run(tmp_path, background):
    data = make_images(tmp_path / "data", per_class=10, size=(64, 64))  # 20 images, rrc:4: 2 images per batch of 8 rows
    args = ["extract", "--data", data, *CLI_FAST[:-4], "--batch-size", "8", "--workers", "0", "--views", "rrc:4", "--json", "-q"]
    reference = json.loads(run_cli(*args, "--cache-dir", tmp_path / "ref").stdout)
    cache = tmp_path / "cache"
    proc = background.start(*args, "--cache-dir", cache, pause_after=3, marker=tmp_path / "paused",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = cache / f"{reference['id']}.partial"
    assert len(list(partial.glob("seg-*.json"))) == 3 and not (cache / f"{reference['id']}.h5").exists()
    resumed = run_cli(*args, "--cache-dir", cache)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["id"] == reference["id"] and out["resumed"] == 6 and out["extracted"] == 14 and out["rows"] == 80
    with featcache.open_features(out["id"], cache) as got, featcache.open_features(out["id"], tmp_path / "ref") as ref:
        assert np.array_equal(got.load(), ref.load()) and got.paths == ref.paths
        assert np.array_equal(got.view, ref.view) and got.meta["content_sha256"] == ref.meta["content_sha256"]


def test_shards_merge_and_incremental_updates_keep_images_whole(data, tmp_path):
    whole = featcache.extract(data, cache_dir=tmp_path / "whole", views="flip", **FAST)
    for i in (1, 0):
        featcache.extract(data, cache_dir=tmp_path / "shards", views="flip", shard=f"{i}/2", **FAST)
    r = run_cli("cache", "merge", whole.id[:8], "--cache-dir", tmp_path / "shards", "-q")
    assert r.returncode == 0, r.stderr
    with featcache.open_features(whole.id, tmp_path / "shards") as m, whole.open() as w:
        assert m.paths == w.paths and np.array_equal(m.view, w.view) and np.array_equal(m.load(), w.load())
        assert m.meta["content_sha256"] == w.meta["content_sha256"] and m.n_views == 2

    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    cache = tmp_path / "inc"
    first = featcache.extract(changed, cache_dir=cache, views="crops:5", **FAST)
    Image.new("RGB", (60, 60), "yellow").save(changed / "a" / "new.png")
    (changed / "c" / "c_003.png").unlink()
    second = featcache.extract(changed, cache_dir=cache, views="crops:5", **FAST)
    assert second.extracted == 1 and second.reused == 23 and second.n_rows == 24 * 5
    fresh = featcache.extract(changed, cache_dir=tmp_path / "fresh", views="crops:5", **FAST)
    assert fresh.id == second.id
    X, paths, _, view, _ = _rows(second)
    Xf, pathsf, _, viewf, _ = _rows(fresh)
    assert paths == pathsf and np.array_equal(view, viewf)
    np.testing.assert_allclose(X, Xf, rtol=1e-2, atol=1e-3)
    X1, paths1, *_ = _rows(first)
    k, k1 = paths.index("b/b_000.png"), paths1.index("b/b_000.png")
    assert np.array_equal(X[k:k + 5], X1[k1:k1 + 5])  # reused rows, views in order


# ----------------------------------------------------------------------------------------- sweep
def test_sweep_compares_view_recipes_like_any_axis(data, tmp_path):
    out = tmp_path / "sw"
    r = run_cli("sweep", "--data", data, *SWEEP_FAST, "--pool", "avg", "--views", "none", "--views", "flip",
                "--head", "logreg", "--param", "logreg.C=1", "--cv", "3", "--out", out, "--cache-dir", tmp_path / "c", "-q")
    assert r.returncode == 0, r.stderr
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["views"] for row in rows) == ["flip", "none"]
    assert "| views |" in (out / "leaderboard.md").read_text()
    state = json.loads((out / "sweep.json").read_text())
    assert sorted(row["config"].get("views", "none") for row in state["rows"].values()) == ["flip", "none"]
    again = run_cli("sweep", "--data", data, *SWEEP_FAST, "--pool", "avg", "--views", "none", "--views", "flip",
                    "--head", "logreg", "--param", "logreg.C=1", "--cv", "3", "--out", out, "--cache-dir", tmp_path / "c", "-q")
    assert again.returncode == 0 and all(row["reused"] for row in json.loads((out / "sweep.json").read_text())["rows"].values())


def test_ray_engine_with_views_gives_the_local_rows(data, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featcache[ray]'")
    from featcache.core.cluster import connect

    connect(num_cpus=2)
    try:
        import ray

        local = featcache.extract(data, cache_dir=tmp_path / "local", views="flip", **FAST)
        remote = featcache.extract(data, cache_dir=tmp_path / "ray", views="flip", engine="ray", **FAST)
    finally:
        ray.shutdown()
    assert remote.id == local.id
    X1, p1, _, v1, _ = _rows(local)
    X2, p2, _, v2, _ = _rows(remote)
    assert p1 == p2 and np.array_equal(v1, v2)
    np.testing.assert_allclose(X2, X1, rtol=2e-3, atol=1e-4)


def test_a_sweep_file_takes_views_as_one_recipe_or_a_list(tmp_path):
    from featcache.sweeps.sweep import plan_from_toml

    (tmp_path / "sweep.toml").write_text('[[features]]\nmodel = "resnet18"\nweights = "none"\npool = "avg"\n'
                                         'views = ["none", "rrc:4"]\n[[features]]\nmodel = "resnet18"\nviews = "flip"\n')
    plan = plan_from_toml(tmp_path / "sweep.toml")
    assert [f.views for f in plan.features] == ["none", "rrc:4:seed=0:scale=0.25", "flip"] and not plan.problems
    (tmp_path / "bad.toml").write_text('[[features]]\nmodel = "resnet18"\nviews = "crops:3"\n')
    assert "crops takes 5" in plan_from_toml(tmp_path / "bad.toml").problems[0]
