"""Issue 2: the extraction engine and the HDF5 feature cache, through the API and the CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import featcache
from featcache import backbones
from featcache.core.errors import CacheError, DataError, ModelError
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

FAST = dict(model="resnet18", weights="none", image_size=32, progress_bar=False)


def test_extract_writes_a_complete_self_describing_feature_set(images, cache_dir):
    result = featcache.extract(images, cache_dir=cache_dir, **FAST)
    assert not result.cache_hit and result.n_rows == 12 and result.feature_shape == (512, 1, 1)
    with featcache.open_features(result.id, cache_dir) as fs:
        assert fs.class_names == ["cats", "dogs"]
        assert fs.labels.tolist() == [0] * 6 + [1] * 6
        assert fs.paths[0] == "cats/cats_000.png" and all(not p.startswith("/") for p in fs.paths)
        assert set(fs.split) == {""}
        X = fs.load()
        assert X.shape == (12, 512, 1, 1) and X.dtype == np.float16 and np.isfinite(X).all()
        meta = fs.meta
    for key in ("model", "weights", "layer", "pool", "preprocess", "feature_shape", "versions", "manifest_sha256",
                "created", "complete", "content_sha256", "data_root", "decode", "precision"):
        assert key in meta, key
    assert meta["model"] == "resnet18" and meta["layer"] == "layer4" and meta["weights"] == "none(seed=0)"
    assert meta["preprocess"]["crop_size"] == 32 and meta["complete"] is True
    assert set(meta["versions"]) >= {"featcache", "torch", "torchvision"}


def test_features_equal_a_plain_torchvision_pipeline(images, cache_dir):
    """The numbers are those of the standard transforms + model, not something featcache invented."""
    from torchvision import transforms as T
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    result = featcache.extract(images, cache_dir=cache_dir, dtype="float32", **{**FAST, "image_size": 64})
    torch.manual_seed(0)
    model = create_feature_extractor(resnet18(weights=None).eval(), ["layer4"])
    tf = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([tf(Image.open(images / "dogs" / f"dogs_00{i}.png").convert("RGB")) for i in range(3)])
    with torch.no_grad():
        expected = model(x)["layer4"].numpy()
    with featcache.open_features(result.id, cache_dir) as fs:
        rows = [fs.paths.index(f"dogs/dogs_00{i}.png") for i in range(3)]
        got = fs.load()[rows]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_split_layout_is_stored_per_row(tmp_path, cache_dir):
    data = tmp_path / "data"
    make_images(data, per_class=3, split="train")
    make_images(data, per_class=2, split="val", seed=1)
    make_images(data, per_class=2, split="test", seed=2)
    result = featcache.extract(data, cache_dir=cache_dir, **FAST)
    with featcache.open_features(result.id, cache_dir) as fs:
        split, paths = fs.split, fs.paths
        assert sorted(set(split)) == ["test", "train", "val"]
        assert all(s == p.split("/")[0] for s, p in zip(split, paths))
        assert (split == "train").sum() == 6 and (split == "test").sum() == 4
        assert fs.class_names == ["cats", "dogs"]


@pytest.mark.parametrize(
    "model,size,shape",
    [("resnet18", 64, (512, 2, 2)), ("mobilenet_v3_small", 64, (576, 2, 2)), ("efficientnet_lite0", 64, (1280, 2, 2)),
     ("vgg16", 32, (512, 1, 1)), ("timm:resnet18", 64, (512, 2, 2))],
)
def test_several_architectures_extract(images, cache_dir, model, size, shape):
    result = featcache.extract(images, model=model, weights="none", image_size=size, cache_dir=cache_dir, progress_bar=False)
    assert result.feature_shape == shape
    with featcache.open_features(result.id, cache_dir) as fs:
        X = fs.load(np.float32)
    assert X.shape == (12,) + shape and np.isfinite(X).all() and X.std() > 0


@pytest.mark.parametrize("model,shape", [("vgg16", (512, 7, 7)), ("resnet18", (512, 7, 7)), ("resnet50", (2048, 7, 7)),
                                         ("efficientnet_lite0", (1280, 7, 7)), ("densenet121", (1024, 7, 7))])
def test_default_cut_is_the_map_before_global_pooling(model, shape):
    assert backbones.resolve(model, weights="none").feature_shape == shape


def test_default_cut_shape_at_224_for_real(images, cache_dir):
    result = featcache.extract(images, model="resnet18", weights="none", cache_dir=cache_dir, progress_bar=False)
    assert result.feature_shape == (512, 7, 7)


def test_layer_pool_and_dtype(images, cache_dir):
    fc6 = featcache.extract(images, model="vgg16", weights="none", layer="classifier.1", image_size=32,
                            cache_dir=cache_dir, progress_bar=False)
    assert fc6.feature_shape == (4096,)
    with featcache.open_features(fc6.id, cache_dir) as fs:
        assert (fs.load() >= 0).all()  # fc6 after ReLU
    full = featcache.extract(images, cache_dir=cache_dir, dtype="float32", **{**FAST, "image_size": 64})
    avg = featcache.extract(images, cache_dir=cache_dir, pool="avg", dtype="float32", **{**FAST, "image_size": 64})
    mx = featcache.extract(images, cache_dir=cache_dir, pool="max", dtype="float32", **{**FAST, "image_size": 64})
    half = featcache.extract(images, cache_dir=cache_dir, **{**FAST, "image_size": 64})
    assert avg.feature_shape == mx.feature_shape == (512,)
    with full.open() as f, avg.open() as a, mx.open() as m, half.open() as h:
        maps = f.load()
        np.testing.assert_allclose(a.load(), maps.mean((2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.load(), maps.max((2, 3)), rtol=1e-6)
        assert f.features.dtype == np.float32 and h.features.dtype == np.float16
        np.testing.assert_allclose(h.load(np.float32), maps, rtol=2e-3, atol=2e-3)
    assert len({full.id, avg.id, mx.id, half.id}) == 4


def test_hdf5_chunks_filters_and_attributes(images, cache_dir):
    result = featcache.extract(images, cache_dir=cache_dir, **{**FAST, "image_size": 224})
    with h5py.File(result.path, "r") as f:
        ds = f["features"]
        assert ds.chunks[1:] == ds.shape[1:]  # chunked along rows only
        assert ds.chunks[0] == 12  # 512x7x7 float16 = 50 KB a row: a 1 MiB chunk holds 20, capped at the 12 rows
        assert ds.compression == "gzip" and ds.compression_opts == 1 and ds.fletcher32 and ds.shuffle
        assert f.attrs["complete"] and f.attrs["id"] == result.id
        assert json.loads(f.attrs["preprocess"])["resize_size"] == 256
        for name in ("labels", "paths", "split", "index", "class_names", "manifest/path", "manifest/mtime_ns", "skipped/reason"):
            assert name in f, name


def test_chunk_rows_target_one_mebibyte():
    from featcache.store.featureset import chunk_rows

    assert chunk_rows((1280, 7, 7), "float16", 10_000) == 8
    assert chunk_rows((512, 7, 7), "float32", 10_000) == 10
    assert chunk_rows((1280,), "float16", 10_000) == 410
    assert chunk_rows((25088,), "float32", 3) == 3


def test_rerun_is_a_cache_hit_that_loads_no_model(images, cache_dir, monkeypatch):
    first = featcache.extract(images, cache_dir=cache_dir, **FAST)

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not build the backbone")

    monkeypatch.setattr(backbones, "build", no_model)
    second = featcache.extract(images, cache_dir=cache_dir, **FAST)
    assert second.cache_hit and second.id == first.id and second.path == first.path


def test_every_input_of_the_key_gives_a_new_feature_set(tmp_path, cache_dir):
    data = make_images(tmp_path / "data")
    base = featcache.extract(data, cache_dir=cache_dir, **FAST).id
    ids = {
        "model": featcache.extract(data, cache_dir=cache_dir, **{**FAST, "model": "resnet34"}).id,
        "layer": featcache.extract(data, cache_dir=cache_dir, **FAST, layer="layer3").id,
        "preprocessing": featcache.extract(data, cache_dir=cache_dir, **{**FAST, "image_size": 40}).id,
        "pool": featcache.extract(data, cache_dir=cache_dir, **FAST, pool="avg").id,
    }
    Image.new("RGB", (30, 30), "red").save(data / "cats" / "new.png")
    ids["data"] = featcache.extract(data, cache_dir=cache_dir, **FAST).id
    assert base not in ids.values() and len(set(ids.values())) == len(ids)
    assert featcache.extract(data, cache_dir=cache_dir, **FAST).cache_hit


def test_the_id_ignores_where_and_how_fast(tmp_path):
    a = make_images(tmp_path / "a")
    r1 = featcache.extract(a, cache_dir=tmp_path / "c1", batch_size=4, workers=0, **FAST)
    r2 = featcache.extract(a, cache_dir=tmp_path / "c2", batch_size=5, workers=1, **FAST)
    assert r1.id == r2.id


def test_weights_file_is_loaded_safely_and_hashed(images, cache_dir, tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    path = tmp_path / "mine.pth"
    torch.save(resnet18().state_dict(), path)
    mine = featcache.extract(images, cache_dir=cache_dir, **{**FAST, "weights": str(path)})
    rand = featcache.extract(images, cache_dir=cache_dir, **FAST)
    assert mine.id != rand.id
    with mine.open() as fs:
        assert fs.meta["weights"].startswith("file:sha256:")
    torch.save({"not": "weights"}, tmp_path / "bad.pth")
    with pytest.raises(featcache.FeatcacheError, match="no state dict|do not fit"):
        featcache.extract(images, cache_dir=cache_dir, **{**FAST, "weights": str(tmp_path / "bad.pth")})


# -- bad input, through the real CLI: one line, exit code 1, no traceback --------------------------------

def _fails(result, *needles):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_offline_weights_message(images, tmp_path):
    r = run_cli("extract", "--data", images, "--model", "resnet18", "--cache-dir", tmp_path / "c",
                env={**__import__("tests.conftest", fromlist=["cli_env"]).cli_env(TORCH_HOME=str(tmp_path / "th"))})
    _fails(r, "resnet18-f37072fd.pth", str(tmp_path / "th" / "hub" / "checkpoints"), "--weights PATH", "--weights none")


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "empty_class", "model", "layer", "size", "cache"])
def test_bad_input_is_one_clear_line(tmp_path, case):
    data = make_images(tmp_path / "data", per_class=2)
    args = ["extract", "--model", "resnet18", "--weights", "none", "--image-size", "32", "--cache-dir", tmp_path / "c", "-q"]
    expect = {
        "missing": (["--data", tmp_path / "nope"], ["does not exist", "--data"]),
        "file": (["--data", data / "cats" / "cats_000.png"], ["not a directory"]),
        "no_classes": (["--data", tmp_path / "flat"], ["no class folders"]),
        "empty_class": (["--data", data], ["holds no images", "empty"]),
        "model": (["--data", data, "--model", "resnet81"], ["unknown model 'resnet81'", "resnet18"]),
        "layer": (["--data", data, "--layer", "layer9"], ["unknown layer 'layer9'", "layer4", "--layers"]),
        "size": (["--data", data, "--model", "vgg16", "--image-size", "16"], ["too small", "--image-size 32"]),
        "cache": (["--data", data, "--cache-dir", data / "cats" / "cats_000.png" / "sub"], ["not writable", "--cache-dir"]),
    }[case]
    if case == "no_classes":  # images without class folders are an unlabelled set (issue 15): none here
        (tmp_path / "flat").mkdir()
    if case == "empty_class":
        (data / "empty").mkdir()
    _fails(run_cli(*(args + expect[0])), *expect[1])


def test_library_raises_typed_errors(tmp_path):
    with pytest.raises(DataError):
        featcache.extract(tmp_path / "nope", **FAST)
    with pytest.raises(ModelError):
        backbones.resolve("resnet18", weights="none", layer="nope")
    with pytest.raises(CacheError, match="no complete feature set"):
        featcache.open_features(None, tmp_path / "empty-cache")


def test_cli_progress_on_stderr_summary_on_stdout_and_quiet(images, tmp_path):
    args = ["extract", "--data", images, "--model", "resnet18", "--weights", "none", "--image-size", "32", "--cache-dir", tmp_path / "c"]
    loud = run_cli(*args)
    assert loud.returncode == 0, loud.stderr
    assert "img/s" in loud.stderr and "12/12" in loud.stderr  # tqdm bar: count, rate
    assert loud.stdout.startswith("feature set ") and "12 x 512x1x1" in loud.stdout and "0 skipped" in loud.stdout
    quiet = run_cli(*args, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and "cache hit" in quiet.stdout


def test_models_lists_default_layer_and_shape():
    r = run_cli("models", "resnet1*")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("resnet18 "))
    assert "layer4" in line and "512x7x7" in line and "ResNet18_Weights.IMAGENET1K_V1" in line
    assert "fc" in run_cli("models", "--layers", "resnet18").stdout.split()
    none = run_cli("models", "resnet_nothing*")
    assert none.returncode == 1 and "no model matches 'resnet_nothing*'" in none.stderr


def test_compile_gives_the_same_features_and_is_recorded(images, cache_dir, tmp_path, monkeypatch):
    """Compilation really happens (a C++ compiler is part of the test environment): a fallback to
    eager, which gives the same features, must fail this test rather than pass it."""
    import warnings

    from featcache.extraction import engine

    forwards = []

    class Recorded(engine.Forward):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            forwards.append(self)

    monkeypatch.setattr(engine, "Forward", Recorded)
    eager = featcache.extract(images, cache_dir=cache_dir, batch_size=5, **FAST)  # 12 images: a short last batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = featcache.extract(images, cache_dir=tmp_path / "c2", batch_size=5, compile=True, streams=2, **FAST)
    fallbacks = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert not fallbacks, fallbacks
    assert len(forwards) == 2 and not forwards[0].is_compiled
    assert forwards[1].is_compiled, "the compiled module was dropped for eager"  # after every batch ran
    assert compiled.id == eager.id  # compilation changes speed (and at most the last bits), not the feature set
    with eager.open() as a, compiled.open() as b:
        np.testing.assert_allclose(b.load(np.float32), a.load(np.float32), rtol=2e-3, atol=1e-3)
        assert b.meta["compiled"] is True and a.meta["compiled"] is False
        assert b.meta["streams"] == 1  # a compiled module is only run from one thread


@pytest.mark.parametrize("streams", [1, 3])
def test_streams_give_the_same_rows_in_order_and_are_recorded(images, cache_dir, tmp_path, streams):
    """Several batches in flight must still be committed whole, once each, in manifest order."""
    reference = featcache.extract(images, cache_dir=cache_dir, batch_size=2, streams=2, **FAST)
    other = featcache.extract(images, cache_dir=tmp_path / f"s{streams}", batch_size=2, streams=streams, **FAST)
    assert other.id == reference.id and other.n_rows == reference.n_rows == 12
    with reference.open() as a, other.open() as b:
        assert b.paths == a.paths
        np.testing.assert_allclose(b.load(np.float32), a.load(np.float32), rtol=2e-3, atol=1e-3)
        assert a.meta["streams"] == 2 and b.meta["streams"] == streams
    bad = run_cli("extract", "--data", images, "--streams", "0", "--cache-dir", tmp_path / "x")
    assert bad.returncode == 2 and "--streams" in bad.stderr
