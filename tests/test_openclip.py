"""Issue 13: OpenCLIP image towers as ``openclip:ARCH/TAG`` (the ``featcache[clip]`` extra).

Nothing is downloaded: the tower is OpenCLIP's ViT-S-32-alt at random init (OpenCLIP's own
``create_model_and_transforms`` gives the reference model and eval transform), and the pretrained
tags' identities and preprocessing come from the configs that ship inside open_clip.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

import featcache
from featcache import backbones
from featcache.config.decode import Decode
from featcache.core.errors import FeatcacheError, ModelError, WeightsError
from featcache.extraction.decode import Transform, normalize
from featcache.store import fingerprint
from tests.conftest import ROOT, cli_env, make_images
from tests.conftest import featcache as run_cli
from tests.test_token_models import TOLERANCE

ARCH = "ViT-S-32-alt"  # OpenCLIP's own ViT: class token, 7x7 patches, ln_post, projection to 256


def _key_id(spec) -> str:
    return fingerprint.config_id(fingerprint.config_key(spec, Decode(), "float16", "fp32"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), per_class=2, size=(60, 44))


@pytest.fixture(scope="module")
def reference(photos):
    """OpenCLIP's random-init model (seed 0, as featcache builds it) and its own eval transform of the photos."""
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    paths = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.png"))
    return model.eval(), torch.stack([transform(Image.open(photos / p)) for p in paths])


def _stored(photos, cache_dir, weights="none", **settings) -> tuple[dict, np.ndarray]:
    result = featcache.extract(photos, model=f"openclip:{ARCH}", weights=weights, dtype="float32", cache_dir=cache_dir,
                               progress_bar=False, **settings)
    with result.open() as fs:
        return fs.meta, fs.load()[np.argsort(fs.paths)]


def test_the_default_cut_is_encode_image(photos, reference, tmp_path):
    model, x = reference
    meta, got = _stored(photos, tmp_path / "c")
    with torch.no_grad():
        expected = model.encode_image(x).numpy()
    assert meta["layer"] == "encode_image" and tuple(meta["feature_shape"]) == (256,) and meta["family"] == "openclip"
    assert meta["versions"]["open_clip"] == open_clip.__version__
    np.testing.assert_allclose(got, expected, **TOLERANCE)


def test_token_pools_are_slices_of_the_towers_token_sequence(photos, reference, tmp_path):
    model, x = reference
    with torch.no_grad():
        out = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True,
                                                 output_fmt="NLC", output_extra_tokens=True)
        patches, cls = out["image_intermediates"][0].numpy(), out["image_intermediates_prefix"][0][:, 0].numpy()
        embedding = model.encode_image(x).numpy()
    for pool, want in (("cls", cls), ("avg_patch", patches.mean(1)), ("avg", np.concatenate([cls[:, None], patches], 1).mean(1))):
        meta, got = _stored(photos, tmp_path / "c", pool=pool)  # no --layer: the tower's token sequence (after ln_post)
        assert meta["layer"] == "ln_post" and tuple(meta["feature_shape"]) == (384,)
        np.testing.assert_allclose(got, want, **TOLERANCE)
        if pool == "cls":  # the class token, projected, is the tower's own embedding
            np.testing.assert_allclose(got @ model.visual.proj.detach().numpy(), embedding, **TOLERANCE)


TAGS = [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-B-16-SigLIP", "webli"), ("ViT-H-14-quickgelu", "dfn5b")]


@pytest.mark.parametrize("name,tag", TAGS)
def test_the_pixels_are_openclips_own_eval_transform(tmp_path, name, tag):
    """Resize mode (shortest / squash), interpolation, mean and std as OpenCLIP's create_model sets them for the tag."""
    spec = backbones.resolve(f"openclip:{name}/{tag}")
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    cfg = merge_preprocess_dict(PreprocessCfg(size=size), open_clip.get_pretrained_cfg(name, tag))
    theirs = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (150, 420)):
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        pre = spec.backbone.preprocess
        ours = normalize(Transform(pre, Decode(draft=False))(str(path))[None], pre)[0]
        np.testing.assert_allclose(ours.numpy(), theirs(Image.open(path)).numpy(), atol=1e-5)


@pytest.mark.parametrize("name,tag_a,tag_b", [("ViT-L-14", "laion2b_s32b_b82k", "datacomp_xl_s13b_b90k"),
                                              ("ViT-H-14-quickgelu", "metaclip_fullcc", "dfn5b")])
def test_two_tags_give_two_ids_and_two_preprocessing_records(name, tag_a, tag_b):
    a, b = (backbones.resolve(f"openclip:{name}/{tag}") for tag in (tag_a, tag_b))
    assert _key_id(a) != _key_id(b) and a.backbone.preprocess != b.backbone.preprocess
    assert a.backbone.weights.identity.startswith(f"openclip:{name}/{tag_a}:hf-hub:")
    # --weights TAG names the same weights as ARCH/TAG
    assert backbones.resolve(f"openclip:{name}/{tag_a}", weights=tag_b).backbone.weights == b.backbone.weights


def test_tags_trained_with_quickgelu_point_to_the_matching_architecture():
    with pytest.raises(WeightsError, match=r"trained with QuickGELU.*openclip:ViT-B-32-quickgelu/openai"):
        backbones.resolve("openclip:ViT-B-32/openai")
    assert backbones.resolve("openclip:ViT-B-32-quickgelu/openai").backbone.weights.identity == (
        "openclip:ViT-B-32-quickgelu/openai:hf-hub:timm/vit_base_patch32_clip_224.openai")
    with pytest.raises(WeightsError, match="names no pretrained weights: use openclip:ViT-B-32/TAG with TAG one of openai"):
        backbones.resolve("openclip:ViT-B-32")
    with pytest.raises(ModelError, match="unknown openclip model 'ViT-B-33/openai': did you mean ViT-B-32-quickgelu/openai"):
        backbones.resolve("openclip:ViT-B-33/openai")


def test_listing_names_what_a_user_can_type_with_cut_and_shape():
    r = run_cli("models", "openclip:ViT-B-32-quickgelu/*", "-q")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("openclip:ViT-B-32-quickgelu/openai "))
    assert "encode_image" in line and " 512 " in line and "hf-hub:timm/vit_base_patch32_clip_224.openai" in line
    assert "openclip:ViT-B-32/openai" not in run_cli("models", "openclip:ViT-B-32/*", "-q").stdout  # builds wrongly


def test_a_whole_openclip_checkpoint_is_a_weights_file(photos, reference, tmp_path):
    model, _ = reference
    torch.save(model.state_dict(), tmp_path / "checkpoint.pt")  # visual.* and the text tower, as OpenCLIP saves it
    _, from_file = _stored(photos, tmp_path / "c", weights=str(tmp_path / "checkpoint.pt"))
    _, random_init = _stored(photos, tmp_path / "c")
    np.testing.assert_array_equal(from_file, random_init)  # the same numbers: seed 0 built both


def test_importing_open_clip_leaves_the_environment_as_it_was():
    code = ("import os; before = dict(os.environ); from featcache import backbones; "
            "backbones.resolve('openclip:ViT-B-32/laion2b_s34b_b79k'); print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_without_the_extra_one_line_names_the_install_command(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what `import open_clip` meets without the package
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[clip\]'"):
        backbones.resolve(f"openclip:{ARCH}", weights="none")
    code = ("import sys; sys.modules['open_clip'] = None; import cli; "
            f"cli.main(['extract', '--data', {str(photos)!r}, '--model', 'openclip:{ARCH}', '--weights', 'none'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "Error: openclip: models need the optional package open_clip_torch (import of open_clip halted; None in "
        "sys.modules): pip install 'featcache[clip]'"]


@pytest.mark.parametrize("model,entry,fetch", [
    ("timm:vit_tiny_patch16_224", "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k",
     "timm.create_model('vit_tiny_patch16_224.augreg_in21k_ft_in1k', pretrained=True)"),
    ("openclip:ViT-B-32/laion2b_s34b_b79k", "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K",
     "open_clip.create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')"),
])
def test_offline_without_cached_weights_is_one_line_naming_the_cache_entry(photos, tmp_path, model, entry, fetch):
    """No traceback, no progress bar: one line (declared offline here; a machine whose DNS cannot resolve the hub
    takes the same path, and one whose hub requests fail gives the same line after huggingface_hub's retries)."""
    r = run_cli("extract", "--data", photos, "--model", model, "--cache-dir", tmp_path / "c",
                env=cli_env(HF_HOME=str(tmp_path / "hf")))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    hub = os.path.join(tmp_path, "hf", "hub")
    for needle in (f"cache entry {entry} (", f"into {hub}/:", fetch, "--weights PATH", "--weights none"):
        assert needle in lines[0], lines[0]
