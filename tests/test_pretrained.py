"""Issue 4: the bundled EfficientNet-Lite0 weights are the real ImageNet ones, loaded key by key."""

from __future__ import annotations

import os

import pytest
import torch

import featcache
from featcache import backbones
from featcache.backbones import efficientnet_lite0 as lite0
from featcache.errors import WeightsError
from featcache.images import Transform, normalize
from tests.conftest import featcache as run_cli, make_images


def _sample(name: str) -> str:
    if name == "grace_hopper.jpg":
        import matplotlib.cbook

        return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    import sklearn

    return os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", name)


@pytest.fixture(scope="module")
def classifier():
    family, arch = backbones.family_of("efficientnet_lite0")
    spec = backbones.resolve("efficientnet_lite0")
    return family.build(arch, spec.backbone.weights), spec.backbone.preprocess


def _top(classifier, path: str, k: int = 3) -> list[str]:
    from torchvision.models import ResNet18_Weights

    model, pre = classifier
    x = normalize(Transform(pre)(path)[None], pre)
    with torch.inference_mode():
        probs = model(x).softmax(-1)[0]
    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # the ImageNet-1k class names, offline
    return [names[i] for i in probs.topk(k).indices.tolist()]


def test_imagenet_predictions_on_pictures_that_ship_in_dependencies(classifier):
    assert _top(classifier, _sample("china.jpg"), 1) == ["palace"]  # scikit-learn's sample photo of a temple
    assert _top(classifier, _sample("flower.jpg"), 1) == ["daisy"]
    assert "military uniform" in _top(classifier, _sample("grace_hopper.jpg"), 3)  # matplotlib's Grace Hopper


def test_random_init_does_not_pass_the_same_check():
    """The check above can fail: the same architecture without the bundled weights gets it wrong."""
    family, arch = backbones.family_of("efficientnet_lite0")
    spec = backbones.resolve("efficientnet_lite0", weights="none")
    random_init = (family.build(arch, spec.backbone.weights), spec.backbone.preprocess)
    assert [_top(random_init, _sample("china.jpg"), 1), _top(random_init, _sample("flower.jpg"), 1)] != [["palace"], ["daisy"]]


def test_remap_names_every_tensor_and_fails_loudly_on_a_different_file(tmp_path):
    state = torch.load(lite0.package_file(), map_location="cpu", weights_only=True)
    model = lite0.EfficientNetLite0().build_random("efficientnet_lite0")
    mapped = lite0.remap(state, model)
    assert len(mapped) == 296 and set(mapped) == set(model.state_dict())
    assert lite0.timm_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert lite0.timm_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite0.timm_key("_fc.weight") == "classifier.weight"
    broken = dict(state)
    broken["_conv_head.weight"] = broken["_conv_head.weight"][:, :10]
    with pytest.raises(WeightsError, match="_conv_head.weight has shape"):
        lite0.remap(broken, model)
    with pytest.raises(WeightsError, match="expected 296 tensors"):
        lite0.remap({k: v for k, v in list(state.items())[:-1]}, model)


def test_timm_backbones_list_extract_and_explain_offline_weights(tmp_path):
    listed = run_cli("models", "timm:resnet1*")
    assert listed.returncode == 0 and "timm:resnet18 " in listed.stdout and "forward_features" in listed.stdout
    data = make_images(tmp_path / "data", per_class=3)
    offline = run_cli("extract", "--data", data, "--model", "timm:resnet18", "--cache-dir", tmp_path / "c")
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert "timm weights" in offline.stderr and "--weights none" in offline.stderr and "--weights PATH" in offline.stderr
    ok = featcache.extract(data, model="timm:resnet18", weights="none", image_size=64, cache_dir=tmp_path / "c", progress_bar=False)
    assert ok.feature_shape == (512, 2, 2)
