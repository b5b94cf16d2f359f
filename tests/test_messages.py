"""Issue 12: an error message names the real cause, not the most likely one."""

from __future__ import annotations

import pytest
import timm

from featcache import backbones
from featcache.backbones import graph
from featcache.core.errors import FeatcacheError, ModelError


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_image_size_below_the_floor_names_the_floor():
    with pytest.raises(ModelError) as err:
        backbones.resolve("resnet18", weights="none", image_size=4)
    assert "at least 8" in _message(err) and "32" not in _message(err)


def test_maps_that_shrink_to_nothing_still_say_too_small():
    with pytest.raises(ModelError, match=r"image size 16 is too small for vgg16 .*use --image-size 32 or larger"):
        backbones.resolve("vgg16", weights="none", image_size=16)


@pytest.mark.parametrize("size", [160, 256])
def test_a_fixed_size_vit_given_another_size_says_it_takes_one_size(size):
    with pytest.raises(ModelError) as err:
        backbones.resolve("timm:vit_tiny_patch16_224", weights="none", image_size=size)
    text = _message(err)
    assert "too small" not in text and "or larger" not in text
    assert "takes only 224x224 inputs" in text and "--image-size 224" in text


def test_a_failure_unrelated_to_the_size_is_reported_as_itself():
    def body(x):
        raise NotImplementedError("no meta kernel for aten::frobnicate")

    with pytest.raises(ModelError) as err:
        graph.output_shape(body, "none", 224, "mymodel")
    text = _message(err)
    assert "too small" not in text and "no meta kernel for aten::frobnicate" in text and "mymodel" in text


def _timm_build_raising(monkeypatch, error: Exception):
    spec = backbones.resolve("timm:resnet18")

    def create_model(name, pretrained=False, **kwargs):
        raise error

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(FeatcacheError) as err:
        backbones.build(spec)
    return _message(err)


def test_a_timm_build_error_that_is_not_about_the_network_names_its_cause(monkeypatch):
    text = _timm_build_raising(monkeypatch, RuntimeError("Error(s) in loading state_dict for ResNet: size mismatch for fc.weight"))
    assert "not cached" not in text and "offline" not in text
    assert "size mismatch for fc.weight" in text and "resnet18.a1_in1k" in text


def test_a_timm_weights_file_missing_offline_gives_the_offline_message(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    text = _timm_build_raising(monkeypatch, LocalEntryNotFoundError("cannot find the requested files in the local cache"))
    assert "not cached and cannot be downloaded (offline)" in text and "--weights none" in text
