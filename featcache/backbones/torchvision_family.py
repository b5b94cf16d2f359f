"""Every torchvision classification model, by name, through torchvision's own registry."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torchvision
from torch import nn
from torchvision.models import VisionTransformer, get_model, get_model_weights, get_weight

from featcache.backbones import graph
from featcache.backbones import weights as w
from featcache.backbones.family import Family
from featcache.backbones.registry import register_backbone
from featcache.backbones.spec import Preprocess, Tokens, Weights
from featcache.core import paths
from featcache.core.errors import WeightsError

# Classifier-only tails where the generic "input of the global pool" rule picks the class map.
_DEFAULT_LAYERS = {"squeezenet1_0": "features", "squeezenet1_1": "features"}


@register_backbone("torchvision")
class TorchvisionFamily(Family):
    name = "torchvision"
    fallback = True

    @functools.cache
    def archs(self) -> list[str]:
        return sorted(torchvision.models.list_models(module=torchvision.models))

    def _enum(self, arch: str, choice: str):
        enum_cls = get_model_weights(arch)
        if choice.upper() == "DEFAULT":
            return enum_cls.DEFAULT
        name = choice.split(".")[-1]
        try:
            return get_weight(f"{enum_cls.__name__}.{name}")
        except (ValueError, KeyError):
            tags = ", ".join(m.name for m in enum_cls)
            raise WeightsError(f"unknown weights {choice!r} for {arch}: use DEFAULT, none, a file path or one of {tags}") from None

    def pretrained(self, arch: str, choice: str) -> Weights:
        return Weights(kind="pretrained", identity=f"torchvision:{self._enum(arch, choice)}")

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        enum = self._enum(arch, weights.identity.split(":", 1)[1] if weights.kind == "pretrained" else "DEFAULT")
        t = enum.transforms()
        return Preprocess(
            resize_size=int(t.resize_size[0]),
            crop_size=int(t.crop_size[0]),
            interpolation=t.interpolation.value,
            mean=tuple(t.mean),
            std=tuple(t.std),
        )

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        # Vision transformers fix their input size at build time; convnets do not.
        extra = {"image_size": image_size} if image_size and arch.startswith("vit_") else {}
        return get_model(arch, weights=None, **extra)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        enum = self._enum(arch, weights.identity.split(":", 1)[1])
        filename = Path(enum.url).name
        cached = w.torch_hub_checkpoints() / filename
        message = w.offline_message(str(enum), filename, enum.url, w.torch_hub_checkpoints())
        if not cached.is_file() and (paths.offline() or not paths.resolvable(urlparse(enum.url).hostname or "")):
            raise WeightsError(message)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return get_model(arch, weights=enum)
        except (URLError, ConnectionError, TimeoutError) as err:
            raise WeightsError(message) from err
        except RuntimeError as err:
            if "hash" in str(err).lower():
                raise WeightsError(f"cached weights {cached} are corrupt (hash mismatch): delete the file and retry") from err
            raise

    def tokens(self, model: nn.Module, size, model_name: str) -> Tokens | None:
        # torchvision's ViT: the class token, then the patches (its default cut is already the class token's embedding).
        if not isinstance(model, VisionTransformer):
            return None
        return Tokens(prefix=1, class_token=True, length=model.seq_length, layer="encoder")

    def default_layer(self, model: nn.Module, arch: str, tokens: Tokens | None) -> str:
        return _DEFAULT_LAYERS.get(arch) or graph.default_cut(model, self.nodes(model))
