"""Any timm model as ``timm:NAME``, cut where timm's own contract cuts.

A map model (ResNet, ConvNeXt, EfficientNet...) is cut at ``forward_features``: the last map before
pooling. A token model (ViT, DeiT, EVA, DINOv2, SigLIP, CLIP towers: ``forward_features`` gives a token
sequence) is cut at ``pre_logits``: ``forward_head(forward_features(x), pre_logits=True)``, the model's
own embedding (its class token, mean of patch tokens or attention pool, with its final norm).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings

from torch import nn

from .. import config
from ..errors import ModelError, WeightsError
from . import graph
from .family import Family
from .spec import CROP_MODES, INTERPOLATIONS, Preprocess, Tokens, Weights

FORWARD_FEATURES = "forward_features"
PRE_LOGITS = "pre_logits"


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

    def _cfg(self, name: str):
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as err:  # timm: "Invalid pretrained tag (x) for arch."
            import timm

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

    def preprocess(self, arch: str, weights: Weights) -> Preprocess:
        """The weights' own input contract, as timm's resolver reads it from their pretrained config."""
        from timm.data import resolve_data_config

        try:
            cfg = self._cfg(self.architecture(arch, weights))
        except WeightsError:
            return Preprocess()
        return preprocess_of(resolve_data_config(pretrained_cfg=cfg.to_dict()), arch)

    def build_random(self, arch: str, image_size: int | None = None) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False)

    def build_pretrained(self, arch: str, weights: Weights) -> nn.Module:
        import timm

        source = weights.identity.split(":", 1)[1]
        name = self.architecture(arch, weights)
        message = (
            f"pretrained timm weights {source} are not cached and cannot be downloaded (offline): "
            f"on a connected machine run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
            "and copy ~/.cache/huggingface (HF_HOME) here, or use --weights PATH for a local state dict, or --weights none"
        )
        import logging

        # Offline (declared, or the hub's name does not resolve): use only the local cache, at once,
        # instead of five retries per file.
        offline = config.offline() or not config.resolvable("huggingface.co")
        quiet = logging.getLogger("huggingface_hub")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), _hub_offline(offline):
                warnings.simplefilter("ignore")
                return timm.create_model(name, pretrained=True)
        except Exception as err:
            if _is_offline_error(err):
                raise WeightsError(message) from err
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise WeightsError(f"cannot build timm model {name} with pretrained weights {source} "
                               f"({type(err).__name__}: {first})") from err
        finally:
            quiet.setLevel(level)

    def nodes(self, model: nn.Module) -> list[str]:
        from timm.models import get_graph_node_names

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_graph_node_names(model)[1]

    def valid_layers(self, model: nn.Module) -> list[str]:
        return [FORWARD_FEATURES, PRE_LOGITS] + self.nodes(model)

    def check_layer(self, model: nn.Module, layer: str, model_name: str) -> None:
        if layer not in (FORWARD_FEATURES, PRE_LOGITS):
            super().check_layer(model, layer, model_name)

    def tokens(self, model: nn.Module, size, model_name: str) -> Tokens | None:
        return timm_tokens(model, size, model_name)

    def default_layer(self, model: nn.Module, arch: str, tokens: Tokens | None) -> str:
        return PRE_LOGITS if tokens else FORWARD_FEATURES

    def body(self, model: nn.Module, layer: str):
        if layer == FORWARD_FEATURES:
            return model.forward_features, model
        if layer == PRE_LOGITS:
            return lambda x: model.forward_head(model.forward_features(x), pre_logits=True), model
        from timm.models import create_feature_extractor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = create_feature_extractor(model, return_nodes=[layer])
        return graph.fx_body(extractor, layer), extractor


def timm_tokens(model: nn.Module, size, model_name: str) -> Tokens | None:
    """A timm model whose ``forward_features`` gives (tokens, dim) per image: its prefix tokens as timm counts
    them (``num_prefix_tokens``: class, register and distillation tokens), the class token first when it has one."""
    shape = graph.output_shape(model.forward_features, "none", size, model_name)
    if len(shape) != 2:
        return None
    return Tokens(prefix=int(getattr(model, "num_prefix_tokens", 0)),
                  class_token=getattr(model, "cls_token", None) is not None, length=shape[0], layer=FORWARD_FEATURES)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub's offline flag, set for this build only (the hub reads it on every request)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _is_offline_error(err: BaseException) -> bool:
    """The weights file is not in the cache and the network cannot fetch it (here or in a cause)."""
    import socket
    from urllib.error import URLError

    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    kinds: tuple[type[BaseException], ...] = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError,
                                              TimeoutError, socket.gaierror, URLError)
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError

        kinds += (RequestsConnectionError,)
    except ImportError:
        pass
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


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
