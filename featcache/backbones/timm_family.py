"""Any timm model as ``timm:NAME``; the default cut is timm's own ``forward_features`` contract."""

from __future__ import annotations

import functools
import math
import warnings

from torch import nn

from .. import config
from ..errors import WeightsError
from . import graph
from .family import Family
from .spec import Preprocess, Weights

FORWARD_FEATURES = "forward_features"


class TimmFamily(Family):
    name = "timm"
    prefix = "timm:"

    @functools.cache
    def archs(self) -> list[str]:
        import timm

        return sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))

    def has(self, arch: str) -> bool:
        import timm

        return timm.models.is_model(arch.split(".")[0])

    def _cfg(self, arch: str):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        if cfg is None:
            raise WeightsError(f"timm has no pretrained weights for {arch}: use --weights none or --weights PATH")
        return cfg

    def pretrained(self, arch: str, choice: str) -> Weights:
        name = arch if choice.upper() == "DEFAULT" else f"{arch.split('.')[0]}.{choice}"
        cfg = self._cfg(name)
        return Weights(kind="pretrained", identity=f"timm:{cfg.hf_hub_id or cfg.url or name}")

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        try:
            cfg = self._cfg(arch).to_dict()
        except WeightsError:
            return Preprocess()
        crop = int(cfg["input_size"][-1])
        return Preprocess(
            resize_size=int(math.floor(crop / cfg.get("crop_pct", 0.875))),
            crop_size=crop,
            interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest") else "bilinear",
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        )

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        import timm

        source = weights.identity.split(":", 1)[1]
        message = (
            f"pretrained timm weights {source} are not cached and cannot be downloaded (offline): "
            f"on a connected machine run `python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"` "
            "and copy ~/.cache/huggingface (HF_HOME) here, or use --weights PATH for a local state dict, or --weights none"
        )
        import logging

        import huggingface_hub.constants as hub

        # Offline (declared, or the hub's name does not resolve): use only the local cache, at once,
        # instead of five retries per file.
        if config.offline() or not config.resolvable("huggingface.co"):
            hub.HF_HUB_OFFLINE = True
        quiet = logging.getLogger("huggingface_hub")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return timm.create_model(arch, pretrained=True)
        except Exception as err:  # huggingface_hub and urllib raise many different types offline
            raise WeightsError(message) from err
        finally:
            quiet.setLevel(level)

    def nodes(self, model: nn.Module) -> list[str]:
        from timm.models import get_graph_node_names

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_graph_node_names(model)[1]

    def valid_layers(self, model: nn.Module) -> list[str]:
        return [FORWARD_FEATURES] + self.nodes(model)

    def check_layer(self, model: nn.Module, layer: str, model_name: str) -> None:
        if layer != FORWARD_FEATURES:
            super().check_layer(model, layer, model_name)

    def default_layer(self, model: nn.Module, arch: str) -> str:
        return FORWARD_FEATURES

    def body(self, model: nn.Module, layer: str):
        if layer == FORWARD_FEATURES:
            return model.forward_features, model
        from timm.models import create_feature_extractor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = create_feature_extractor(model, return_nodes=[layer])
        return graph.fx_body(extractor, layer), extractor
