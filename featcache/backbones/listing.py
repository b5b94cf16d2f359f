"""``featcache models``: the backbones one can name, with default cut and feature shape.

Describing a model builds it on the meta device (no weights; from milliseconds to about a second for
big transformers; the tags of one architecture share one build), so descriptions are memoised per
torchvision/timm/open_clip version in the user's cache directory, and one listing spends at most
``budget_s`` seconds describing: a glob over thousands of names (``timm:*``) lists them all at once and
describes more each time it is run.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from featcache import backbones
from featcache.backbones import ModelInfo
from featcache.core import progress
from featcache.core.files import write_json
from featcache.core.paths import user_cache_dir

# Bump when a description changes for the same library versions (2: timm token models default to pre_logits;
# OpenCLIP rows; 3: no longer keyed by the feature-set key version, which says nothing about descriptions).
MEMO_VERSION = 3
DESCRIBE_SECONDS = 30.0


def _memo_path() -> Path:
    try:
        open_clip = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip = "none"
    return user_cache_dir() / (f"models-v{MEMO_VERSION}-tv{version('torchvision')}-timm{version('timm')}-oc{open_clip}.json")


def list_models(pattern: str | None = None, budget_s: float = DESCRIBE_SECONDS, progress_bar: bool = True) -> list[ModelInfo]:
    """Models matching ``pattern`` (a glob; ``timm:*`` for timm, ``openclip:*`` for OpenCLIP). Rows not yet
    memoised are described in order until ``budget_s`` seconds have passed; the rest have ``default_layer`` "?"."""
    rows = backbones.model_names(pattern)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    missing = sum(name not in memo for _, _, name in rows)
    bar = progress.bar(missing, "describing models", progress_bar and missing > 0 and budget_s > 0, unit="model")
    deadline, known = time.monotonic() + budget_s, len(memo)
    out = []
    try:
        for family, arch, name in rows:
            if name not in memo and time.monotonic() < deadline:
                info = backbones.describe(family, arch, name)
                memo[name] = [info.default_layer, list(info.feature_shape), info.weights]
                bar.update()
            out.append(_info(family, name, memo.get(name)))
    finally:  # an interrupted listing keeps what it described
        bar.close()
        if len(memo) > known:
            try:
                memo_file.parent.mkdir(parents=True, exist_ok=True)
                write_json(memo_file, memo, indent=None)
            except OSError:
                pass
    return out


def _info(family, name: str, known: list | None) -> ModelInfo:
    layer, shape, weights = known or ("?", [], "-")
    return ModelInfo(name, family.name, layer, tuple(shape), weights, described=known is not None)
