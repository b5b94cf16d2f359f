"""OpenCLIP image towers as ``openclip:ARCH/PRETRAINED`` (e.g. ``openclip:ViT-B-32/laion2b_s34b_b79k``).

The optional extra ``featcache[clip]`` (``open_clip_torch``) provides them; it is imported on first use.
Only the image tower is kept. Its default cut, ``encode_image``, is the model's image embedding
(``model.encode_image(x)``, unnormalised: the tower's output after its pooling and projection). The
weights are the pretrained tag's file, found by OpenCLIP in the Hugging Face cache; their identity names
the tag and the Hugging Face repository. The preprocessing is the one OpenCLIP builds for the tag
(``image_transform``): the tower's input size, the tag's mean, std, interpolation and resize mode.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os

import torch
from torch import nn

from featcache.backbones import weights as w
from featcache.backbones.family import Family
from featcache.backbones.registry import register_backbone
from featcache.backbones.spec import INTERPOLATIONS, Preprocess, Tokens, Weights
from featcache.backbones.timm_family import timm_tokens
from featcache.core import paths
from featcache.core.errors import ModelError, WeightsError

ENCODE_IMAGE = "encode_image"
INSTALL = "pip install 'featcache[clip]'"
# OpenCLIP's eval resize modes as featcache's crop modes ("longest" pads with black: featcache pads with the mean).
_RESIZE_MODES = {"shortest": "center", "squash": "squash"}


def open_clip():
    """The ``open_clip`` module, or a one-line error naming the extra. Importing it sets
    TOKENIZERS_PARALLELISM in the process environment (its tokenizer module does): put back as it was."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        import open_clip as module  # open_clip: the optional [clip] extra
    except ImportError as err:
        raise ModelError(f"openclip: models need the optional package open_clip_torch ({err.msg}): {INSTALL}") from None
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    return module


def split(arch: str) -> tuple[str, str]:
    """``ViT-B-32/laion2b_s34b_b79k`` -> (``ViT-B-32``, ``laion2b_s34b_b79k``); no tag -> (arch, "")."""
    name, _, tag = arch.partition("/")
    return name, tag


class _FromOpenClip(logging.Filter):
    """OpenCLIP logs on the root logger ("No pretrained weights loaded...", download failures): with no
    handler configured, Python would print those lines on the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet():
    root, drop = logging.getLogger(), _FromOpenClip()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@register_backbone("openclip")
class OpenClipFamily(Family):
    name = "openclip"
    usage = "OpenCLIP: openclip:ARCH/TAG"
    prefix = "openclip:"

    # -- catalogue -------------------------------------------------------------------------------
    @functools.cache
    def archs(self) -> list[str]:
        """What a user can type: every pretrained (architecture, tag) OpenCLIP lists that builds as trained."""
        oc = open_clip()
        return [f"{name}/{tag}" for name, tag in oc.list_pretrained() if not self._activation_mismatch(name, tag)]

    def has(self, arch: str) -> bool:
        return split(arch)[0] in open_clip().list_models()

    def _tags(self, name: str) -> list[str]:
        return open_clip().list_pretrained_tags_by_model(name)

    # -- weights ---------------------------------------------------------------------------------
    def _activation_mismatch(self, name: str, tag: str) -> bool:
        oc = open_clip()
        return bool(oc.get_pretrained_cfg(name, tag).get("quick_gelu", False)) != bool(
            (oc.get_model_config(name) or {}).get("quick_gelu", False))

    def _pretrained_cfg(self, name: str, tag: str) -> dict:
        cfg = open_clip().get_pretrained_cfg(name, tag)
        if not cfg:
            tags = self._tags(name)
            raise WeightsError(f"unknown OpenCLIP weights tag {tag!r} for {name}: use openclip:{name}/TAG (or --weights TAG), "
                               f"--weights none or a file path; TAG one of {', '.join(tags) or '(OpenCLIP has none for it)'}")
        return cfg

    def pretrained(self, arch: str, choice: str) -> Weights:
        name, tag = split(arch)
        tag = tag if choice.upper() == "DEFAULT" else choice
        if not tag:
            tags = self._tags(name)
            raise WeightsError(f"openclip:{name} names no pretrained weights: use openclip:{name}/TAG with TAG one of "
                               f"{', '.join(tags) or '(OpenCLIP has none for it)'}, or --weights none or a file path")
        cfg = self._pretrained_cfg(name, tag)
        if self._activation_mismatch(name, tag):
            twin = f"{name}-quickgelu" if cfg.get("quick_gelu") else name.removesuffix("-quickgelu")
            raise WeightsError(f"OpenCLIP weights {tag} were trained with{'' if cfg.get('quick_gelu') else 'out'} QuickGELU "
                               f"activations, which {name} does not use: use openclip:{twin}/{tag}")
        source = f"hf-hub:{w.hub_repo(cfg['hf_hub'])}" if cfg.get("hf_hub") else cfg.get("url", "")
        return Weights(kind="pretrained", identity=f"openclip:{name}/{tag}:{source}", name=f"{name}/{tag}")

    def architecture(self, arch: str, weights: Weights) -> str:
        return split(arch)[0]

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        """OpenCLIP's preprocessing for the tag (pretrained: the weights' tag; otherwise the tag in the name, if
        any), at the tower's input size, as ``create_model`` sets it and ``image_transform`` applies it."""
        oc = open_clip()
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict  # open_clip: the optional [clip] extra

        name, tag = split(weights.name if weights.kind == "pretrained" else arch)
        model_cfg = oc.get_model_config(name) or {}
        cfg = merge_preprocess_dict(PreprocessCfg(), oc.get_pretrained_cfg(name, tag) if tag else {})
        size = model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"])
        return preprocess_of(cfg, size, arch)

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        oc = open_clip()
        name = split(arch)[0]
        _check_text_tower(name)
        try:
            with _quiet(), w.hub_offline(True):  # random init: never a download (a timm trunk's own weights included)
                model = oc.create_model(name, pretrained=None, device=torch.get_default_device(),
                                        pretrained_image=False, pretrained_text=False)
        except Exception as err:  # e.g. a Hugging Face text tower without the transformers package
            raise ModelError(w.build_error(f"OpenCLIP model {name}", err)) from err
        return model.visual

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        oc = open_clip()
        name, tag = weights.name.split("/")
        _check_text_tower(name)
        offline = paths.offline() or not paths.resolvable("huggingface.co")
        try:
            with _quiet(), w.hub_offline(offline):
                model = oc.create_model(name, pretrained=tag)
        except Exception as err:
            if w.is_offline_error(err):
                raise WeightsError(self._offline_message(name, tag)) from err
            raise WeightsError(w.build_error(f"OpenCLIP model {name} with pretrained weights {tag}", err)) from err
        return model.visual

    def _offline_message(self, name: str, tag: str) -> str:
        hub_id = self._pretrained_cfg(name, tag)["hf_hub"]
        repo, file = w.hub_repo(hub_id), hub_id.strip("/").split("/")[2:]
        files = file[0] if file else "open_clip_model.safetensors or open_clip_pytorch_model.bin"
        fetch = f"python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\""
        return w.hub_offline_message(f"OpenCLIP weights {name}/{tag}", repo, files, fetch)

    def load_file(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """A local file: an image tower's state dict, or a whole OpenCLIP checkpoint (its ``visual.`` tensors)."""
        if any(k.startswith("visual.") for k in state):
            state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        super().load_file(model, state, source)

    # -- graph -----------------------------------------------------------------------------------
    def valid_layers(self, model: nn.Module) -> list[str]:
        return [ENCODE_IMAGE] + self.nodes(model)

    def check_layer(self, model: nn.Module, layer: str, model_name: str) -> None:
        if layer != ENCODE_IMAGE:
            super().check_layer(model, layer, model_name)

    def tokens(self, model: nn.Module, size, model_name: str) -> Tokens | None:
        """OpenCLIP's own ViT: its class token, then the patches (``ln_post`` normalises them unless the tower
        pools first); a timm trunk: timm's layout, at the trunk's final norm."""
        if hasattr(model, "trunk"):
            inner = timm_tokens(model.trunk, size, model_name) if hasattr(model.trunk, "forward_features") else None
            return Tokens(inner.prefix, inner.class_token, inner.length, "trunk.norm") if inner else None
        if not hasattr(model, "class_embedding") or not hasattr(model, "grid_size"):
            return None  # e.g. the ModifiedResNet of RN50
        gh, gw = model.grid_size
        after_norm = model.attn_pool is None and not model.final_ln_after_pool
        return Tokens(prefix=1, class_token=True, length=gh * gw + 1, layer="ln_post" if after_norm else "transformer")

    def default_layer(self, model: nn.Module, arch: str, tokens: Tokens | None) -> str:
        return ENCODE_IMAGE

    def body(self, model: nn.Module, layer: str):
        if layer == ENCODE_IMAGE:
            return lambda x: _embedding(model(x)), model
        return super().body(model, layer)


def _check_text_tower(name: str) -> None:
    """OpenCLIP builds the whole model before featcache keeps its image tower: a text tower taken from Hugging Face
    transformers needs that package (its weights, too, come with the checkpoint)."""
    hf_text = (open_clip().get_model_config(name) or {}).get("text_cfg", {}).get("hf_model_name")
    if hf_text and importlib.util.find_spec("transformers") is None:
        raise ModelError(f"OpenCLIP builds {name} with the text tower {hf_text} from Hugging Face transformers, which is "
                         "not installed: pip install transformers")


def _embedding(out):
    """``encode_image``'s value from the tower's output: towers built with ``output_tokens`` (CoCa) return
    (pooled, tokens), and ``encode_image`` keeps the pooled embedding."""
    return out[0] if isinstance(out, tuple) else out


def preprocess_of(cfg: dict, size, arch: str) -> Preprocess:
    """OpenCLIP's merged preprocess config at the tower's ``size`` -> the record (``image_transform``, eval)."""
    mode = _RESIZE_MODES.get(cfg["resize_mode"])
    if mode is None or cfg["interpolation"] not in INTERPOLATIONS:
        raise ModelError(f"OpenCLIP's preprocessing for {arch} asks for resize mode {cfg['resize_mode']!r} and "
                         f"interpolation {cfg['interpolation']!r}; featcache applies resize modes {', '.join(_RESIZE_MODES)} "
                         f"and {', '.join(INTERPOLATIONS)}")
    square = not isinstance(size, (list, tuple)) or size[0] == size[1]
    # A non-square "shortest" resize is timm's ResizeKeepRatio at its default, bicubic, whatever the tag says.
    interpolation = cfg["interpolation"] if square or mode != "center" else "bicubic"
    return Preprocess(resize_size=size, crop_size=size, interpolation=interpolation, mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), crop_mode=mode)
