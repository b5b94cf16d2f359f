"""Backbones: name -> family -> (architecture, weights, preprocessing), cut at a layer.

``resolve`` fixes everything that determines the feature numbers without loading any weights
(architectures are built on the meta device); ``build`` turns that record into a ready module.
A new built-in backbone is one module with one ``@register_backbone`` class.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from classifiers.registry import Registry, unknown_message

from featcache.core.errors import FeatcacheError, ModelError
from featcache.config.extract import check_image_size
from featcache.backbones import graph
from featcache.backbones import weights as w
from featcache.backbones.family import Family
from featcache.backbones.spec import Backbone, ExtractorSpec, Preprocess, Tokens, Weights

registry: Registry[type[Family]] = Registry("backbone")
register_backbone = registry.register

from featcache.backbones import efficientnet_lite  # noqa: E402,F401  (registers the built-in, offline backbones)
from featcache.backbones.openclip_family import OpenClipFamily  # noqa: E402  (imports open_clip only when used)
from featcache.backbones.timm_family import TimmFamily  # noqa: E402
from featcache.backbones.torchvision_family import TorchvisionFamily  # noqa: E402

_TORCHVISION = TorchvisionFamily()
_TIMM = TimmFamily()
_OPENCLIP = OpenClipFamily()
_PREFIXED = (_TIMM, _OPENCLIP)  # families a user names as PREFIX:ARCH

__all__ = ["Backbone", "ExtractorSpec", "Preprocess", "Weights", "resolve", "build", "model_names", "describe", "family_of"]


def family_of(model: str) -> tuple[Family, str]:
    """Which family builds ``model`` and under which architecture name."""
    for family in _PREFIXED:
        if model.startswith(family.prefix):
            arch = model[len(family.prefix):]
            if not family.has(arch):
                raise ModelError(unknown_message(f"{family.name} model", arch, family.archs())
                                 + f" (`featcache models '{family.prefix}*'` lists them)")
            return family, arch
    if model in registry:
        return registry.get(model)(), model
    if _TORCHVISION.has(model):
        return _TORCHVISION, model
    known = registry.names() + _TORCHVISION.archs()
    raise ModelError(unknown_message("model", model, known)
                     + " (timm models: timm:NAME, OpenCLIP: openclip:ARCH/TAG; `featcache models` lists all)")


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


def model_names(pattern: str | None = None) -> list[tuple[Family, str, str]]:
    """(family, arch, user-facing name) for built-ins and torchvision; timm and OpenCLIP for their own globs
    (``timm:*``, ``openclip:*``)."""
    prefixed = [f for f in _PREFIXED if pattern and pattern.startswith(f.prefix)]
    if prefixed:
        rows = [(prefixed[0], a, prefixed[0].prefix + a) for a in prefixed[0].archs()]
    else:
        rows = [(registry.get(n)(), n, n) for n in registry.names()]
        rows += [(_TORCHVISION, a, a) for a in _TORCHVISION.archs()]
    return [r for r in rows if not pattern or fnmatch.fnmatch(r[2], pattern)]


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

