"""Any timm model as ``timm:NAME``, cut where timm's own contract cuts.

A map model (ResNet, ConvNeXt, EfficientNet...) is cut at ``forward_features``: the last map before
pooling. A token model (ViT, DeiT, EVA, DINOv2, SigLIP, CLIP towers: ``forward_features`` gives a token
sequence) is cut at ``pre_logits``: ``forward_head(forward_features(x), pre_logits=True)``, the model's
own embedding (its class token, mean of patch tokens or attention pool, with its final norm).
"""

from __future__ import annotations

import functools
import math
import weakref
from pathlib import Path

import torch
from torch import nn

from featcache.backbones import graph
from featcache.backbones import weights as w
from featcache.backbones.family import Family
from featcache.backbones.registry import register_backbone
from featcache.backbones.spec import CROP_MODES, INTERPOLATIONS, Preprocess, Tokens, Weights
from featcache.core import paths
from featcache.core.errors import ModelError, WeightsError

FORWARD_FEATURES = "forward_features"
PRE_LOGITS = "pre_logits"


@register_backbone("timm")
class TimmFamily(Family):
    name = "timm"
    usage = "timm models: timm:NAME"
    prefix = "timm:"
    tracer = "timm"

    @functools.cache
    def archs(self) -> list[str]:
        import timm  # timm: loaded on first use (a second or so)

        return sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))

    def has(self, arch: str) -> bool:
        import timm  # timm: loaded on first use (a second or so)

        return timm.models.is_model(arch.split(".")[0])

    def _cfg(self, name: str):
        from timm.models import get_pretrained_cfg  # timm: loaded on first use (a second or so)

        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as err:  # timm: "Invalid pretrained tag (x) for arch."
            import timm  # timm: loaded on first use (a second or so)

            base, _, tag = name.partition(".")
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
            raise WeightsError(f"unknown weights tag {tag!r} for timm:{base}: use DEFAULT, none, a file path or one of "
                               f"{', '.join(tags) or '(timm has no pretrained tags for it)'}") from err
        if cfg is None:
            raise WeightsError(f"timm has no pretrained weights for {name}: use --weights none or --weights PATH")
        return cfg

    def pretrained(self, arch: str, choice: str) -> Weights:
        name = arch if choice.upper() == "DEFAULT" else f"{arch.split('.')[0]}.{choice}"
        cfg = self._cfg(name)
        return Weights(kind="pretrained", identity=f"timm:{cfg.hf_hub_id or cfg.url or name}",
                       name=f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture)

    def architecture(self, arch: str, weights: Weights) -> str:
        return weights.name if weights.kind == "pretrained" and weights.name else arch

    def cut_key(self, built: str) -> str:
        return built.split(".")[0]  # a weights tag changes the input size (part of the key) and the classes, not the cut

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        """The weights' own input contract, as timm's resolver reads it from their pretrained config."""
        from timm.data import resolve_data_config  # timm: loaded on first use (a second or so)

        try:
            cfg = self._cfg(self.architecture(arch, weights))
        except WeightsError:
            return Preprocess()
        return preprocess_of(resolve_data_config(pretrained_cfg=cfg.to_dict()), arch)

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        import timm  # timm: loaded on first use (a second or so)

        return timm.create_model(arch, pretrained=False)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        import timm  # timm: loaded on first use (a second or so)

        name = self.architecture(arch, weights)
        # Offline (declared, or the hub's name does not resolve): use only the local cache, at once,
        # instead of five retries per file.
        offline = paths.offline() or not paths.resolvable("huggingface.co")
        try:
            with w.hub_offline(offline):
                return timm.create_model(name, pretrained=True)
        except Exception as err:
            if w.is_offline_error(err):
                raise WeightsError(self._offline_message(name)) from err
            raise WeightsError(w.build_error(f"timm model {name} with pretrained weights {weights.identity}", err)) from err

    def _offline_message(self, name: str) -> str:
        cfg = self._cfg(name)
        fetch = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
        if cfg.hf_hub_id:
            file = cfg.hf_hub_filename or "model.safetensors or pytorch_model.bin"
            return w.hub_offline_message(f"timm weights {name}", w.hub_repo(cfg.hf_hub_id), file, fetch)
        return w.offline_message(f"{name} (timm)", Path(cfg.url).name, cfg.url, w.torch_hub_checkpoints())

    def valid_layers(self, model: nn.Module) -> list[str]:
        return [FORWARD_FEATURES, PRE_LOGITS] + self.nodes(model)

    def check_layer(self, model: nn.Module, layer: str, model_name: str) -> None:
        if layer not in (FORWARD_FEATURES, PRE_LOGITS):
            super().check_layer(model, layer, model_name)

    def tokens(self, model: nn.Module, size, model_name: str) -> Tokens | None:
        return timm_tokens(model, size, model_name)

    def layer_shape(self, model: nn.Module, layer: str, size, model_name: str) -> tuple[int, ...]:
        if layer == FORWARD_FEATURES:
            return features_shape(model, size, model_name)
        if layer == PRE_LOGITS:  # the head on forward_features' output: no second pass through the blocks
            inputs = torch.empty((1, *features_shape(model, size, model_name)), device="meta")
            return tuple(model.forward_head(inputs, pre_logits=True).shape[1:])
        return super().layer_shape(model, layer, size, model_name)

    def default_layer(self, model: nn.Module, arch: str, tokens: Tokens | None) -> str:
        return PRE_LOGITS if tokens else FORWARD_FEATURES

    def body(self, model: nn.Module, layer: str):
        if layer == FORWARD_FEATURES:
            return model.forward_features, model
        if layer == PRE_LOGITS:
            return lambda x: model.forward_head(model.forward_features(x), pre_logits=True), model
        return super().body(model, layer)


_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # meta model -> {input size: shape}


def features_shape(model: nn.Module, size, model_name: str) -> tuple[int, ...]:
    """``forward_features``' output shape per image on the meta device, computed once per model and size."""
    shapes = _FEATURES.setdefault(model, {})
    if size not in shapes:
        shapes[size] = graph.output_shape(model.forward_features, "none", size, model_name)
    return shapes[size]


def timm_tokens(model: nn.Module, size, model_name: str) -> Tokens | None:
    """A timm model whose ``forward_features`` gives (tokens, dim) per image: its prefix tokens as timm counts
    them (``num_prefix_tokens``: class, register and distillation tokens), the class token first when it has one."""
    shape = features_shape(model, size, model_name)
    if len(shape) != 2:
        return None
    return Tokens(prefix=int(getattr(model, "num_prefix_tokens", 0)),
                  class_token=getattr(model, "cls_token", None) is not None, length=shape[0], layer=FORWARD_FEATURES)


def preprocess_of(data: dict, arch: str) -> Preprocess:
    """timm's resolved data config -> the record; resize sizes as timm's eval transform computes them."""
    h, w = (int(v) for v in data["input_size"][-2:])
    crop_pct = data["crop_pct"]
    if data["interpolation"] not in INTERPOLATIONS or data["crop_mode"] not in CROP_MODES:
        raise ModelError(f"timm's data config for {arch} asks for interpolation {data['interpolation']!r} and crop mode "
                         f"{data['crop_mode']!r}; featcache applies {', '.join(INTERPOLATIONS)} and {', '.join(CROP_MODES)}")
    return Preprocess(
        resize_size=(math.floor(h / crop_pct), math.floor(w / crop_pct)),
        crop_size=(h, w),
        interpolation=data["interpolation"],
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        crop_mode=data["crop_mode"],
    )
