"""Cutting a network at a named node of its FX graph, and learning output shapes without weights.

Architectures are built on the ``meta`` device where they allow it, so resolving a layer, checking
an image size and computing the feature shape cost milliseconds and load no parameters; that is
what lets a cache hit skip the model entirely.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import warnings
import weakref
from typing import Callable

import torch
from torch import nn
from torchvision.models import feature_extraction as tv_feature_extraction

from featcache.backbones.spec import Tokens
from featcache.config.choices import POOLS, one_of
from featcache.core.errors import FeatcacheError, ModelError

TOKEN_POOLS = ("cls", "avg_patch")  # they need to know where a token sequence's patch tokens start
_TRY_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 299, 320, 384, 448, 512)
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_POOL_FUNCTIONS = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "flatten", "mean")


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build without allocating parameters; fall back to the CPU for builders that need data.

    Either way the caller's random state is left as it was (a forked CPU generator)."""
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return build().eval()
        except FeatcacheError:  # the family's own verdict (a missing package...): the CPU would say the same
            raise
        except Exception:  # e.g. regnet computes widths with tensors at build time
            return build().eval().to("meta")


def default_cut(model: nn.Module, nodes: list[str]) -> str:
    """The node feeding the first global pooling or flatten: the convolutional base's last map."""
    for i, node in enumerate(nodes[1:], start=1):
        if _is_global_pool(model, node):
            return module_name(nodes[i - 1], nodes)
    return module_name(nodes[-2], nodes)  # no pooling (e.g. ViT): the input of the final head


def module_name(node: str, nodes: list[str]) -> str:
    """The shortest module prefix whose last node is ``node`` (``layer4`` for ``layer4.1.relu_1``)."""
    parts = node.split(".")
    for k in range(1, len(parts)):
        prefix = ".".join(parts[:k])
        inside = [n for n in nodes if n == prefix or n.startswith(prefix + ".")]
        if inside and inside[-1] == node:
            return prefix
    return node


def check_layer(layer: str, nodes: list[str], model_name: str) -> None:
    prefixes = {".".join(n.split(".")[:k]) for n in nodes for k in range(1, n.count(".") + 2)}
    if layer in prefixes:
        return

    close = difflib.get_close_matches(layer, sorted(prefixes), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = ", ".join(nodes[:3] + ["..."] + nodes[-4:]) if len(nodes) > 8 else ", ".join(nodes)
    raise ModelError(
        f"unknown layer {layer!r} for {model_name}: {hint}valid nodes are {shown} "
        f"({len(nodes)} in all; `featcache models {model_name} --layers` lists them)"
    )


def pool_features(out: torch.Tensor, pool: str, prefix: int = 0) -> torch.Tensor:
    """Reduce spatial maps (N, C, H, W) or token sequences (N, T, D) to vectors.

    ``prefix``: how many class/register tokens open a token sequence (``avg_patch`` leaves them out);
    ``cls`` is the first token, as in timm, torchvision and OpenCLIP vision transformers.
    """
    if pool == "none":
        return out
    if out.dim() == 4:
        return out.mean((2, 3)) if pool == "avg" else out.amax((2, 3))
    if out.dim() == 3:
        if pool == "cls":
            return out[:, 0]
        if pool == "avg_patch":
            return out[:, prefix:].mean(1)
        return out.mean(1) if pool == "avg" else out.amax(1)
    return out


def check_pool(pool: str, shape: tuple[int, ...], layer: str, tokens: Tokens | None = None) -> None:
    """``shape``: the layer's output per image; ``tokens``: the model's token layout (None for maps)."""
    if pool not in POOLS:
        raise ModelError(f"unknown pooling {pool!r}: use {one_of(POOLS)}")
    if pool != "none" and len(shape) < 2:  # already a vector per image
        raise ModelError(
            f"--pool {pool} needs a spatial map or a token sequence, but layer {layer!r} gives {shape[0]}-d vectors: use --pool none"
        )
    if pool not in TOKEN_POOLS:
        return
    if len(shape) != 2 or tokens is None:
        raise ModelError(f"--pool {pool} needs a token sequence, but layer {layer!r} gives {'x'.join(map(str, shape))} maps: "
                         "use --pool avg or max")
    if shape[0] != tokens.length:
        raise ModelError(f"--pool {pool} needs the model's whole token sequence ({tokens.length} tokens, the first "
                         f"{tokens.prefix} before the patches), but layer {layer!r} gives {shape[0]}: use a block's output, "
                         "or --pool avg or max")
    if pool == "cls" and not tokens.class_token:
        raise ModelError(f"--pool cls: the model has no class token ({tokens.prefix} register token(s) before the patches): "
                         "use --pool avg_patch, or leave --layer out for the model's own embedding")


class Cut(nn.Module):
    """A backbone body returning one tensor, followed by the chosen pooling."""

    def __init__(self, body: Callable[[torch.Tensor], torch.Tensor], pool: str, modules: nn.Module, prefix: int = 0):
        super().__init__()
        self.inner = modules  # registered so .to()/.eval() reach every parameter
        self._body = body
        self.pool = pool
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self._body(x), self.pool, self.prefix)


def fx_body(extractor: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: extractor(x)[layer]


class _Output(Exception):
    """Carries a module's output out of the forward pass (which then stops)."""


def module_output(model: nn.Module, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s input -> ``module``'s output at its first call, caught by a forward hook; the rest of the
    forward pass is not run. What an FX cut at the module returns, for a module called once."""
    def run(x: torch.Tensor) -> torch.Tensor:
        def catch(_module, _inputs, output):
            raise _Output(output)

        handle = module.register_forward_hook(catch)
        try:
            model(x)
        except _Output as out:
            return out.args[0]
        finally:
            handle.remove()
        raise RuntimeError("the module was not called in the forward pass")

    return run


_NODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its eval-mode node names


def fx_nodes(model: nn.Module, tracer: str) -> list[str]:
    """The eval-mode graph nodes of ``model`` as ``tracer``'s FX tracer names them ("torchvision", or "timm",
    which keeps timm's leaf modules whole), traced once per model (each trace is a train and an eval pass)."""
    if model not in _NODES:
        if tracer == "timm":
            from timm.models import get_graph_node_names as node_names  # timm: imported where a timm model is traced
        else:
            node_names = tv_feature_extraction.get_graph_node_names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _NODES[model] = node_names(model)[1]
    return _NODES[model]


def fx_cut(model: nn.Module, layer: str, tracer: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """``model`` cut at the graph node (or module) ``layer``: the body and the module holding its parameters."""
    if tracer == "timm":
        from timm.models import create_feature_extractor  # timm: imported where a timm model is cut
    else:
        create_feature_extractor = tv_feature_extraction.create_feature_extractor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = create_feature_extractor(model, return_nodes=[layer])
    return fx_body(extractor, layer), extractor


def output_shape(body: Callable[[torch.Tensor], torch.Tensor], pool: str, size: int | tuple[int, int],
                 model_name: str) -> tuple[int, ...]:
    """Feature shape per image at a ``size`` x ``size`` (or (height, width)) input, computed on the meta device."""
    h, w = (size, size) if isinstance(size, int) else size
    try:
        out = _run(body, pool, h, w)
    except Exception as err:  # the model rejects the size (maps shrink to zero, fixed-size ViT, ...) or fails otherwise
        raise ModelError(_size_problem(body, (h, w), model_name, err)) from err
    shape = tuple(int(s) for s in out.shape[1:])
    if any(s == 0 for s in shape):
        raise ModelError(f"image size {size} gives an empty feature map for {model_name}: use a larger --image-size")
    return shape


def pooled_shape(shape: tuple[int, ...], pool: str) -> tuple[int, ...]:
    """What ``pool`` leaves of a ``shape`` per image."""
    return tuple(pool_features(torch.empty((1, *shape), device="meta"), pool).shape[1:])


def _run(body, pool: str, h: int, w: int) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pool_features(body(torch.empty(1, 3, h, w, device="meta")), pool)


def _size_problem(body, tried: tuple[int, int], model_name: str, err: Exception) -> str:
    """Why the model failed at ``tried``, judged by which square sizes it does take."""
    shown = f"{tried[0]}x{tried[1]}" if tried[0] != tried[1] else str(tried[0])
    why = _first_line(err)
    working = []
    for size in _TRY_SIZES:
        with contextlib.suppress(Exception):
            _run(body, "none", size, size)
            working.append(size)
    if not working:
        return f"cannot compute the output of {model_name} at input size {shown}: {why}"
    if len(working) == 1:
        return (f"{model_name} takes only {working[0]}x{working[0]} inputs, not {shown} ({why}): "
                f"use --image-size {working[0]}, or leave --image-size out")
    if working[0] > max(tried):
        return f"image size {shown} is too small for {model_name} ({why}): use --image-size {working[0]} or larger"
    return f"{model_name} cannot take input size {shown} ({why}): sizes it takes include {', '.join(map(str, working[:6]))}"


def _is_global_pool(model: nn.Module, node: str) -> bool:
    try:
        return isinstance(model.get_submodule(node), _POOL_MODULES)
    except AttributeError:  # a function call node such as ``adaptive_avg_pool2d`` or ``flatten_1``
        return re.sub(r"_\d+$", "", node.rsplit(".", 1)[-1]) in _POOL_FUNCTIONS


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
