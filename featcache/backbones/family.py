"""The contract every source of backbones fulfils, so extraction never special-cases an architecture."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from featcache.backbones import graph
from featcache.backbones import weights as w
from featcache.backbones.spec import Preprocess, Tokens, Weights


class Family:
    """A source of architectures and weights (torchvision, timm, or one built-in backbone).

    Subclasses implement the architecture, pretrained-weights and graph hooks; building a model with
    any kind of weights and cutting it at a layer is shared here.
    """

    name: str = ""
    prefix: str = ""  # what a user writes before the architecture name, e.g. "timm:"
    usage: str = ""  # how a user names this library's models, for messages (e.g. "timm models: timm:NAME")
    fallback: bool = False  # a library that claims the plain names it has (torchvision), after the built-ins
    tracer: str = "torchvision"  # whose FX tracer names the graph nodes --layer accepts (graph.fx_nodes)

    # -- catalogue -------------------------------------------------------------------------------
    def archs(self) -> list[str]:
        raise NotImplementedError

    def has(self, arch: str) -> bool:
        return arch in self.archs()

    # -- weights ---------------------------------------------------------------------------------
    def pretrained(self, arch: str, choice: str) -> Weights:
        """The identity of named pretrained weights (``DEFAULT`` or a tag); must not download."""
        raise NotImplementedError

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        raise NotImplementedError

    def architecture(self, arch: str, weights: Weights) -> str:
        """What is built for ``weights``: the architecture, or a source's own name for them (timm's arch.tag)."""
        return arch

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        raise NotImplementedError

    def cut_key(self, built: str) -> str:
        """What, besides the input size, fixes the layers and shapes of what ``architecture`` names."""
        return built

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        """Build with pretrained weights, downloading into the standard cache when online."""
        raise NotImplementedError

    def build(self, arch: str, weights: Weights, image_size: int | None = None) -> nn.Module:
        # Building initialises parameters from torch's CPU generator: a forked one, so the caller's
        # random state is as it was (random init is reproducible: that generator is seeded first).
        with torch.random.fork_rng(devices=[]):
            if weights.kind == "pretrained":
                model = self.build_pretrained(arch, weights)
            else:
                torch.random.default_generator.manual_seed(w.INIT_SEED)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = self.build_random(arch, image_size)
                if weights.kind == "file":
                    self.load_file(model, w.load_state_dict_file(weights.path), weights.path)
        return model.eval().requires_grad_(False)

    def load_file(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a local state dict (``--weights PATH``) into ``model``, strictly."""
        w.load_into(model, state, source)

    # -- graph -----------------------------------------------------------------------------------
    def nodes(self, model: nn.Module) -> list[str]:
        return graph.fx_nodes(model, self.tracer)

    def tokens(self, model: nn.Module, size: int | tuple[int, int], model_name: str) -> Tokens | None:
        """The token layout of a transformer at input ``size`` (meta device), or None for a map model."""
        return None

    def default_layer(self, model: nn.Module, arch: str, tokens: Tokens | None) -> str:
        """What a linear probe should see: a map model's last map before pooling, a token model's own embedding."""
        raise NotImplementedError

    def body(self, model: nn.Module, layer: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        """A function image batch -> the layer's output, and the module holding its parameters."""
        return graph.fx_cut(model, layer, self.tracer)

    def layer_shape(self, model: nn.Module, layer: str, size, model_name: str) -> tuple[int, ...]:
        """The layer's output shape per image at input ``size`` (``model`` is on the meta device). A module's output
        is caught by a hook (no FX trace); another graph node's comes from the cut itself."""
        try:
            body = graph.module_output(model, model.get_submodule(layer))
        except AttributeError:
            body = self.body(model, layer)[0]
        return graph.output_shape(body, "none", size, model_name)

    def valid_layers(self, model: nn.Module) -> list[str]:
        return self.nodes(model)

    def check_layer(self, model: nn.Module, layer: str, model_name: str) -> None:
        graph.check_layer(layer, self.nodes(model), model_name)
