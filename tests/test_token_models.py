"""Issue 13: a token model's default cut is its own embedding; pooling a token sequence is explicit.

Tiny random-init timm models (nothing is downloaded): ``test_vit`` has a class token and pools it,
``test_vit2`` has one register token and no class token and averages its patch tokens (with a norm after
the pool), EVA-02 Tiny has a class token and averages its patch tokens. What featcache stores, through
the whole pipeline (decode, preprocessing, batches, engine), is compared with the model's own
computation on timm's own eval transform.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

import featcache
from featcache import backbones
from featcache.core.errors import FeatcacheError, ModelError
from tests.conftest import cli_env, make_images
from tests.conftest import featcache as run_cli

# The features are float32 from the same weights and the same pixels: what differs is the order of float
# operations (batches, channels_last, normalisation on whole batches).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
MODELS = {"test_vit": (1, True), "test_vit2": (1, False), "eva02_tiny_patch14_224": (1, True)}  # prefix tokens, class token


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), per_class=2, size=(60, 44))


def _reference(arch: str, photos) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    """The random-init model as featcache builds it (seed 0), and the photos through timm's own eval transform."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    transform = create_transform(**resolve_model_data_config(model), is_training=False)
    paths = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.png"))
    x = torch.stack([transform(Image.open(photos / p).convert("RGB")) for p in paths])
    return model, x, paths


def _stored(photos, cache_dir, arch: str, **settings) -> tuple[dict, np.ndarray]:
    result = featcache.extract(photos, model=f"timm:{arch}", weights="none", dtype="float32", cache_dir=cache_dir,
                               progress_bar=False, **settings)
    with result.open() as fs:
        order = np.argsort(fs.paths)
        return fs.meta, fs.load()[order]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_the_default_cut_is_the_models_own_embedding(photos, tmp_path, arch):
    model, x, _ = _reference(arch, photos)
    meta, got = _stored(photos, tmp_path / "c", arch)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    assert meta["layer"] == "pre_logits" and tuple(meta["feature_shape"]) == (model.num_features,)
    np.testing.assert_allclose(got, expected, **TOLERANCE)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_token_pools_are_slices_of_the_token_sequence(photos, tmp_path, arch):
    prefix, class_token = MODELS[arch]
    model, x, _ = _reference(arch, photos)
    with torch.no_grad():
        tokens = model.forward_features(x).numpy()
    assert model.num_prefix_tokens == prefix
    _, stored = _stored(photos, tmp_path / "c", arch, layer="forward_features")
    np.testing.assert_allclose(stored, tokens, **TOLERANCE)  # --pool none keeps the whole sequence
    expected = {"avg_patch": tokens[:, prefix:].mean(1), "avg": tokens.mean(1)}
    if class_token:
        expected["cls"] = tokens[:, 0]
    for pool, want in expected.items():
        meta, got = _stored(photos, tmp_path / "c", arch, layer="forward_features", pool=pool)
        assert meta["pool"] == pool and tuple(meta["feature_shape"]) == (tokens.shape[-1],)
        np.testing.assert_allclose(got, want, **TOLERANCE)


def test_the_layout_of_register_and_distillation_tokens_is_timms():
    dinov2 = backbones.resolve("timm:vit_small_patch14_reg4_dinov2", weights="none")  # meta device: nothing computed
    assert dinov2.layer == "pre_logits" and dinov2.feature_shape == (384,)
    assert (dinov2.tokens.prefix, dinov2.tokens.class_token, dinov2.tokens.length) == (5, True, 5 + 37 * 37)
    deit = backbones.resolve("timm:deit_tiny_distilled_patch16_224", weights="none", layer="blocks.11", pool="avg_patch")
    assert deit.tokens.prefix == 2 and deit.feature_shape == (192,)
    siglip = backbones.resolve("timm:vit_base_patch16_siglip_224", weights="none")  # attention pooling, no prefix tokens
    assert siglip.layer == "pre_logits" and siglip.feature_shape == (768,) and not siglip.tokens.class_token
    assert backbones.resolve("vit_b_16", weights="none", layer="encoder.layers.encoder_layer_11", pool="cls").feature_shape == (768,)


def test_map_models_keep_their_map_and_every_timm_model_offers_pre_logits():
    assert backbones.resolve("timm:resnet18", weights="none").layer == "forward_features"
    assert backbones.resolve("timm:resnet18", weights="none", layer="pre_logits").feature_shape == (512,)
    assert "pre_logits" in backbones.layers("timm:test_vit")[:2]


def test_a_token_pool_without_a_layer_pools_the_token_sequence():
    for model, layer in (("timm:test_vit", "forward_features"), ("vit_b_16", "encoder")):
        for pool in ("cls", "avg_patch", "avg"):
            spec = backbones.resolve(model, weights="none", pool=pool)
            assert spec.layer == layer and len(spec.feature_shape) == 1, (model, pool)


@pytest.mark.parametrize("model,layer,pool,needle", [
    ("timm:test_vit2", None, "cls", "no class token"),
    ("timm:test_vit", "pre_logits", "avg_patch", "gives 64-d vectors"),
    ("timm:test_vit", "patch_embed", "avg_patch", "needs a token sequence"),
    ("vit_b_16", "permute", "avg_patch", "197 tokens, the first 1 before the patches.*gives 196"),  # patches only
    ("timm:resnet18", None, "cls", "needs a token sequence"),
])
def test_a_token_pool_where_it_cannot_apply_is_one_clear_error(model, layer, pool, needle):
    with pytest.raises(ModelError, match=needle):
        backbones.resolve(model, weights="none", layer=layer, pool=pool)


def test_the_pooling_choices_are_one_list_everywhere(photos, tmp_path):
    from featcache.config.choices import POOLS
    from featcache.config.extract import ExtractConfig

    assert POOLS == ("none", "avg", "max", "cls", "avg_patch")
    with pytest.raises(FeatcacheError, match="unknown pooling 'mean'"):
        ExtractConfig(pool="mean")
    for command in ("extract", "sweep"):
        shown = run_cli(command, "--help").stdout
        assert "[none|avg|max|cls|avg_patch]" in shown.replace("\n", "").replace(" ", ""), shown
    ok = run_cli("extract", "--data", photos, "--model", "timm:test_vit", "--weights", "none", "--pool", "cls",
                 "--layer", "forward_features", "--cache-dir", tmp_path / "c", "-q")
    assert ok.returncode == 0 and "x 64 " in ok.stdout, ok.stderr


def test_a_pre_seeded_hugging_face_cache_serves_pretrained_weights_offline(photos, tmp_path):
    """What the README tells an offline user to do: the weights file in the cache entry timm reads, under HF_HOME."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}
    snapshot = tmp_path / "hf" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    save_file(state, tmp_path / "same.safetensors")
    env = cli_env(HF_HOME=str(tmp_path / "hf"))  # FEATCACHE_OFFLINE=1
    pretrained = run_cli("extract", "--data", photos, "--model", "timm:test_vit", "--cache-dir", tmp_path / "c",
                         "--dtype", "float32", "--json", "-q", env=env)
    from_file = run_cli("extract", "--data", photos, "--model", "timm:test_vit", "--weights", tmp_path / "same.safetensors",
                        "--cache-dir", tmp_path / "c", "--dtype", "float32", "--json", "-q", env=env)
    assert pretrained.returncode == 0 and from_file.returncode == 0, pretrained.stderr + from_file.stderr
    a, b = (featcache.open_features(json.loads(r.stdout)["id"], tmp_path / "c") for r in (pretrained, from_file))
    with a, b:
        assert a.meta["weights"] == "timm:timm/test_vit.r160_in1k" and a.meta["layer"] == "pre_logits"
        np.testing.assert_array_equal(a.load(), b.load())


def test_listing_shows_each_token_models_cut_and_describes_within_its_time(tmp_path, monkeypatch):
    from featcache.backbones.listing import list_models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # an empty memo
    assert all(not r.described and r.default_layer == "?" for r in list_models("timm:*dinov2*", budget_s=0, progress_bar=False))
    rows = list_models("timm:vit_small_patch14*dinov2*", progress_bar=False)
    assert [r.name for r in rows] == ["timm:vit_small_patch14_dinov2", "timm:vit_small_patch14_dinov2.lvd142m",
                                      "timm:vit_small_patch14_reg4_dinov2", "timm:vit_small_patch14_reg4_dinov2.lvd142m"]
    assert {(r.default_layer, r.feature_shape, r.described) for r in rows} == {("pre_logits", (384,), True)}
    again = list_models("timm:*dinov2*", budget_s=0, progress_bar=False)  # memoised: described without building
    assert sum(r.described for r in again) == 4
