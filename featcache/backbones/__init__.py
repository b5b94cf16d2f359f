"""Backbones: name -> family -> (architecture, weights, preprocessing), cut at a layer.

``resolve`` fixes everything that determines the feature numbers without loading any weights
(architectures are built on the meta device); ``build`` turns that record into a ready module.
A new backbone (or library of them) is one module with one ``@register_backbone`` class
(featcache/backbones/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Each family module registers itself on import (featcache/backbones/registry.py).
from featcache.backbones import efficientnet_lite, graph, openclip_family, timm_family, torchvision_family  # noqa: F401
from featcache.backbones import weights as w
from featcache.backbones.family import Family
from featcache.backbones.registry import family_of, model_names, register_backbone, registry  # noqa: F401
from featcache.backbones.spec import Backbone, ExtractorSpec, Preprocess, Tokens, Weights
from featcache.config.extract import check_image_size
from featcache.core.errors import FeatcacheError

__all__ = ["Backbone", "ExtractorSpec", "Preprocess", "Weights", "resolve", "for_config", "build", "model_names", "describe",
           "family_of", "register_backbone"]


def weights_for(family: Family, arch: str, choice: str | None) -> Weights:
    choice = (choice or "DEFAULT").strip()
    if choice.lower() == "none":
        return w.NONE
    if w.is_file_choice(choice):
        return w.file_weights(choice)
    return family.pretrained(arch, choice)


def resolve(
    model: str,
    weights: str | None = "DEFAULT",
    layer: str | None = None,
    pool: str = "none",
    image_size: int | None = None,
) -> ExtractorSpec:
    """Pin down a backbone cut without loading weights: the record the feature-set id hashes."""
    family, arch = family_of(model)
    chosen = weights_for(family, arch, weights)
    preprocess = family.preprocess(arch, chosen)
    image_size = check_image_size(image_size)
    if image_size is not None:
        preprocess = preprocess.with_image_size(image_size)
    layer, shape, tokens = _cut(family, family.architecture(arch, chosen), preprocess.crop_size, layer, pool, model)
    backbone = Backbone(name=model, family=family.name, arch=arch, weights=chosen, preprocess=preprocess)
    return ExtractorSpec(backbone=backbone, layer=layer, pool=pool, feature_shape=shape, tokens=tokens)


# (family, what is built, input size, layer asked, pool) -> (layer, feature shape, token layout): the same for every
# weights tag of an architecture, so describing or resolving its tags builds it on the meta device once.
_CUTS: dict[tuple, tuple[str, tuple[int, ...], Tokens | None]] = {}


def for_config(cfg) -> ExtractorSpec:
    """The extractor record an ``ExtractConfig`` asks for: ``resolve`` with its model, weights, cut,
    pooling and image size (loads no weights)."""
    return resolve(cfg.model, weights=cfg.weights, layer=cfg.layer, pool=cfg.pool, image_size=cfg.image_size)


def _cut(family: Family, built: str, size, layer: str | None, pool: str, model: str):
    key = (type(family), family.cut_key(built), size, layer, pool)
    if key not in _CUTS:
        skeleton = graph.build_on_meta(lambda: family.build_random(built, size))
        tokens = family.tokens(skeleton, size, model)
        if layer is None:  # a token pool without a layer pools the model's token sequence
            layer = tokens.layer if tokens and pool != "none" else family.default_layer(skeleton, built, tokens)
        family.check_layer(skeleton, layer, model)
        out = family.layer_shape(skeleton, layer, size, model)
        graph.check_pool(pool, out, layer, tokens)
        if len(_CUTS) > 256:
            _CUTS.clear()
        _CUTS[key] = (layer, out if pool == "none" else graph.pooled_shape(out, pool), tokens)
    return _CUTS[key]


def build(spec: ExtractorSpec):
    """The ready feature extractor (eval mode, no grad): loads or downloads the weights."""
    family, arch = family_of(spec.backbone.name)
    model = family.build(arch, spec.backbone.weights, spec.backbone.preprocess.crop_size)
    body, holder = family.body(model, spec.layer)
    return graph.Cut(body, spec.pool, holder, spec.tokens.prefix if spec.tokens else 0).eval()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    default_layer: str
    feature_shape: tuple[int, ...]
    weights: str
    described: bool = True  # False: listed by name only (featcache models ran out of its time to describe)


def describe(family: Family, arch: str, name: str) -> ModelInfo:
    """Default layer and feature shape at the default input size (meta device: no weights)."""
    try:
        spec = resolve(name, weights="none")
        weights = family.pretrained(arch, "DEFAULT").identity
        return ModelInfo(name, family.name, spec.layer, spec.feature_shape, weights)
    except FeatcacheError:  # a model featcache cannot cut or build here: listed, undescribed
        return ModelInfo(name, family.name, "?", (), "-")


def layers(model: str) -> list[str]:
    family, arch = family_of(model)
    return family.valid_layers(graph.build_on_meta(lambda: family.build_random(arch)))

