"""Issue 12: ``timm:NAME --weights TAG`` builds that tag's weights with that tag's own preprocessing.

Nothing is downloaded: the tags' pretrained configs ship inside timm, and the build path is checked
by recording the name timm is asked for.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from featcache import backbones
from featcache.backbones.spec import Preprocess
from featcache.config.decode import Decode
from featcache.core.errors import WeightsError
from featcache.extraction.decode import Transform
from featcache.store import fingerprint

# Two tags of one architecture whose configs differ: crop_pct + interpolation; input size + crop mode.
PAIRS = [("resnet50", "a1_in1k", "tv_in1k"), ("convnext_tiny", "fb_in1k", "fb_in22k_ft_in1k_384")]


def _key_id(spec) -> str:
    return fingerprint.config_id(fingerprint.config_key(spec, Decode(), "float16", "fp32"))


def _timm_data_config(name: str) -> dict:
    """timm's own resolution for one tag, from a model built on the meta device (no weights)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return resolve_model_data_config(model)


@pytest.mark.parametrize("arch,tag_a,tag_b", PAIRS)
def test_two_tags_give_two_ids_and_each_tags_own_preprocessing(arch, tag_a, tag_b):
    specs = {tag: backbones.resolve(f"timm:{arch}", weights=tag) for tag in (tag_a, tag_b)}
    assert _key_id(specs[tag_a]) != _key_id(specs[tag_b])
    assert specs[tag_a].backbone.preprocess != specs[tag_b].backbone.preprocess
    for tag, spec in specs.items():
        data = _timm_data_config(f"{arch}.{tag}")
        pre = spec.backbone.preprocess
        assert pre.crop_hw == tuple(data["input_size"][1:])
        assert pre.crop_mode == data["crop_mode"] and pre.interpolation == data["interpolation"]
        assert pre.mean == pytest.approx(data["mean"]) and pre.std == pytest.approx(data["std"])
        assert spec.feature_shape[-1] == -(-data["input_size"][-1] // 32)  # the map follows the tag's input size


def _photo(tmp_path, size=(300, 200)) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / f"photo-{size[0]}x{size[1]}.png"
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("name", ["resnet50.a1_in1k", "resnet50.tv_in1k", "convnext_tiny.fb_in22k_ft_in1k_384",
                                  "vit_base_patch16_sapiens2.fb", "deepseek_vit_412m.deepseek_v4_flash_vision_exp"])
def test_featcache_pixels_equal_timms_own_eval_transform(tmp_path, name):
    """Center, squash (square and non-square 1024x768) and border crops give timm's pixels exactly."""
    arch, tag = name.split(".", 1)
    family, _ = backbones.family_of(f"timm:{arch}")
    pre = family.preprocess(arch, family.pretrained(arch, tag))
    data = _timm_data_config(name)
    theirs = create_transform(**data, is_training=False, normalize=False)
    for size in ((300, 200), (150, 420)):
        path = _photo(tmp_path, size)
        ours = Transform(pre, Decode(draft=False))(path)
        expected = theirs(Image.open(path).convert("RGB"))
        assert ours.dtype == torch.uint8 and tuple(ours.shape) == tuple(expected.shape)
        assert torch.equal(ours, expected), name


def test_the_build_asks_timm_for_the_tag(monkeypatch):
    spec = backbones.resolve("timm:resnet50", weights="tv_in1k")
    asked = []

    def create_model(name, pretrained=False, **kwargs):
        asked.append((name, pretrained))
        raise RuntimeError("recorded")

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(Exception):
        backbones.build(spec)
    assert asked == [("resnet50.tv_in1k", True)]


def test_the_default_tag_named_explicitly_is_the_same_feature_set():
    assert _key_id(backbones.resolve("timm:resnet18", weights="a1_in1k")) == _key_id(backbones.resolve("timm:resnet18"))


def test_an_unknown_tag_lists_the_known_ones():
    with pytest.raises(WeightsError, match=r"unknown weights tag 'nosuch' for timm:resnet50: .*tv_in1k"):
        backbones.resolve("timm:resnet50", weights="nosuch")


# Ids and preprocessing records made before Preprocess could express crop modes and non-square sizes
# (computed with the code of commit dc3cdae): they must not move. A layer of None is the default cut; timm's
# token models took forward_features by default then (issue 13 made pre_logits their default), so their
# pinned id is that explicit cut's.
PINNED = {
    ("efficientnet_lite0", "DEFAULT", None): "a20d2d21d8d03752",
    ("efficientnet_lite0", "none", None): "3199e798b5d19cd9",
    ("resnet18", "DEFAULT", None): "d5c683a7ae893537",
    ("resnet18", "none", None): "c103f0797346fc37",
    ("vit_b_16", "DEFAULT", None): "a55e19b6101fefaa",
    ("timm:resnet18", "DEFAULT", None): "49b5768db45a15df",
    ("timm:resnet18", "none", None): "fbddb8a2303db37c",
    ("timm:convnext_tiny", "DEFAULT", None): "47c73a9ae7c274a6",
    ("timm:vit_base_patch16_224", "DEFAULT", "forward_features"): "c6f350da6c4d6691",
}


@pytest.mark.parametrize("model,weights,layer", sorted(PINNED, key=str))
def test_existing_feature_set_ids_do_not_change(model, weights, layer):
    assert _key_id(backbones.resolve(model, weights=weights, layer=layer)) == PINNED[(model, weights, layer)]


def test_a_default_preprocess_record_serialises_as_before():
    assert fingerprint.canonical(Preprocess().to_dict()) == (
        b'{"crop_size":224,"interpolation":"bilinear","mean":[0.485,0.456,0.406],"resize_size":256,"std":[0.229,0.224,0.225]}')
    assert fingerprint.canonical(backbones.resolve("timm:resnet18").backbone.preprocess.to_dict()) == (
        b'{"crop_size":224,"interpolation":"bicubic","mean":[0.485,0.456,0.406],"resize_size":235,"std":[0.229,0.224,0.225]}')
    squash = Preprocess(resize_size=(1024, 768), crop_size=(1024, 768), crop_mode="squash")
    assert Preprocess.from_dict(squash.to_dict()) == squash and squash.to_dict()["crop_size"] == [1024, 768]
    assert Preprocess.from_dict(Preprocess().to_dict()) == Preprocess()
