"""``featcache models``: the backbones one can name, with default cut and feature shape.

Describing a model builds it on the meta device (no weights, but up to a second for big ones),
so descriptions are memoised per torchvision/timm version in the user's cache directory.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from . import backbones, progress
from .config import user_cache_dir
from .files import write_json
from .backbones import ModelInfo
from .fingerprint import KEY_VERSION


def _memo_path() -> Path:
    return user_cache_dir() / f"models-tv{version('torchvision')}-timm{version('timm')}-k{KEY_VERSION}.json"


def list_models(pattern: str | None = None, describe_limit: int = 400, progress_bar: bool = True) -> list[ModelInfo]:
    """Models matching ``pattern`` (a glob; ``timm:*`` for timm), described when there are few enough."""
    rows = backbones.model_names(pattern)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if len(rows) > describe_limit:  # e.g. all of timm: names only, plus what is already known
        return [_info(family, name, memo.get(name)) for family, _, name in rows]
    out, changed = [], False
    missing = [r for r in rows if r[2] not in memo]
    bar = progress.bar(len(missing), "describing models", progress_bar and bool(missing), unit="model")
    for family, arch, name in rows:
        if name not in memo:
            info = backbones.describe(family, arch, name)
            memo[name] = [info.default_layer, list(info.feature_shape), info.weights]
            changed = True
            bar.update()
        out.append(_info(family, name, memo[name]))
    bar.close()
    if changed:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(memo_file, memo, indent=None)
        except OSError:
            pass
    return out


def _info(family, name: str, known: list | None) -> ModelInfo:
    layer, shape, weights = known or ("?", [], "-")
    return ModelInfo(name, family.name, layer, tuple(shape), weights)
