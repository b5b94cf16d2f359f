"""One record for the settings of an extraction, used wherever those settings travel.

The CLI builds it from its options, ``extract()`` takes it (or builds it from keyword arguments),
the feature set stores it (``extract_args``), ``fit`` prints the command that refreshes a stale set
from it, a sweep row is one, and ``predict`` rebuilds the extractor from the stored one. Written
out once, the settings cannot drift between those places (the refresh command that silently built
a new set instead of updating the old one was what five copies cost).

``ExtractConfig`` holds what the user asked for, ``auto`` included; ``extraction.engine.resolve()``
turns the ``auto`` values into what this machine will run with, once.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from featcache.config.choices import AUTO, BACKENDS, DECODERS, DTYPES, ON_ERROR, POOLS, PRECISIONS, one_of
from featcache.config.decode import Decode
from featcache.config.views import Views, ViewsError
from featcache.core import paths
from featcache.core.errors import FeatcacheError, ModelError

# The settings that change the feature numbers (they enter the feature-set id through the resolved
# extractor, decode, dtype, precision and views); the rest change where, how fast or how robustly.
# ``views`` enters only when it is not "none", so every id made before views existed is unchanged.
IDENTITY = ("model", "weights", "layer", "pool", "image_size", "dtype", "precision", "draft", "decode", "views")
# --image-size bounds. The largest crop of a common backbone is 1024 px (SAM's ViT; DINOv2 518, SigLIP
# 896): 4096 leaves 4x headroom, and its crop is 48 MiB as uint8 (201 MiB as float32), so a decoding
# worker's batch of 32 stays near 1.5 GiB. 100000 px wanted ~30 GB per image and an OOM kill.
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096


def check_image_size(size) -> int | None:
    """``--image-size`` as a whole number of pixels within featcache's bounds (None: the weights' own).

    The one rule for extract, sweep, predict and the Python API; a model's own floor (a vgg needs 32)
    is found later by tracing it."""
    if size is None:
        return None
    try:
        number = None if isinstance(size, bool) else int(str(size).strip())
    except ValueError:
        number = None
    if number is None:
        raise ModelError(f"--image-size {size!r} is not a whole number of pixels: e.g. --image-size 224")
    if number < MIN_IMAGE_SIZE:
        raise ModelError(f"--image-size {number} is too small: featcache takes crops of at least {MIN_IMAGE_SIZE} pixels")
    if number > MAX_IMAGE_SIZE:
        raise ModelError(f"--image-size {number} is too large: featcache takes crops of at most {MAX_IMAGE_SIZE} pixels "
                         f"(one {number} px crop alone is {3 * number * number / 2**30:.1f} GiB); use {MAX_IMAGE_SIZE} or less")
    return number


def count_or_auto(value, flag: str, minimum: int) -> int | str:
    """A whole number >= ``minimum``, or "auto" (the CLI passes text, the library numbers)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = None if isinstance(value, bool) else int(str(value).strip())
    except ValueError:
        number = None
    if number is None:
        raise FeatcacheError(f"{flag} {value!r} is not a whole number or auto: e.g. {flag} 8, or {flag} auto")
    if number < minimum:
        raise FeatcacheError(f"{flag} {number} is too small: use {minimum} or more, or auto")
    return number


def parse_shard(shard) -> tuple[int, int] | None:
    if shard is None or isinstance(shard, tuple):
        return shard
    if isinstance(shard, list):
        return (int(shard[0]), int(shard[1]))
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        raise FeatcacheError(f"--shard {shard!r} is not I/N: use e.g. --shard 0/4 (I counts from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise FeatcacheError(f"--shard {shard}: I must be in 0..{max(n - 1, 0)} (I counts from 0)")
    return i, n


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``featcache extract`` can be told; defaults are the CLI's defaults."""

    data: str = str(paths.DEFAULT_DATA_DIR)
    labels: str | None = None  # a CSV path,label[,split] instead of class folders; enters the id through the manifest
    model: str = paths.DEFAULT_MODEL
    weights: str = "DEFAULT"
    layer: str | None = None
    pool: str = "none"
    image_size: int | None = None
    dtype: str = "float16"
    precision: str = AUTO  # auto = fp16 autocast on CUDA, fp32 on CPU
    draft: bool = True  # libjpeg draft decoding of large JPEGs (the cpu decoder only)
    decode: str = "cpu"  # cpu: Pillow in the workers; gpu: JPEG batches decoded on the device (featcache/jpeg.py)
    views: str = "none"  # augmented views per image, cut in the workers (featcache/views.py): none|flip|crops:N|rrc:N
    # speed only: never part of the id
    batch_size: int | str = AUTO
    workers: int | str = AUTO
    streams: int | str = AUTO
    device: str = AUTO
    compile: bool = False
    engine: str = "local"
    ray_address: str | None = None
    # where and how robustly
    cache_dir: str | None = None
    on_error: str = "skip"
    shard: tuple[int, int] | None = None
    lock_timeout: float = -1
    incremental: bool = True

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        set_("data", os.fspath(self.data))
        if self.labels is not None:
            set_("labels", os.fspath(self.labels))
        if self.cache_dir is not None:
            set_("cache_dir", os.fspath(self.cache_dir))
        set_("weights", str(self.weights if self.weights is not None else "DEFAULT"))
        if self.pool not in POOLS:
            raise FeatcacheError(f"unknown pooling {self.pool!r}: use {one_of(POOLS)}")
        if self.dtype not in DTYPES:
            raise FeatcacheError(f"unknown dtype {self.dtype!r}: use {one_of(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise FeatcacheError(f"unknown precision {self.precision!r}: use {one_of(PRECISIONS)}")
        if self.on_error not in ON_ERROR:
            raise FeatcacheError(f"unknown --on-error {self.on_error!r}: use {one_of(ON_ERROR)}")
        if self.engine not in BACKENDS:
            raise FeatcacheError(f"unknown engine {self.engine!r}: use {one_of(BACKENDS)}")
        if self.decode not in DECODERS:
            raise FeatcacheError(f"unknown decode {self.decode!r}: use {one_of(DECODERS)}")
        if self.decode == "gpu" and self.engine == "ray":
            raise FeatcacheError("--decode gpu runs in the local engine only: drop --engine ray, or use --decode cpu with it")
        set_("views", self.recipe_of(self.views))
        if self.views != "none" and self.decode == "gpu":
            raise FeatcacheError("--views cuts views from the image decoded in the CPU workers; --decode gpu does not "
                                 "support it: use --decode cpu with --views")
        set_("image_size", check_image_size(self.image_size))
        set_("batch_size", count_or_auto(self.batch_size, "--batch-size", 1))
        set_("workers", count_or_auto(self.workers, "--workers", 0))
        set_("streams", count_or_auto(self.streams, "--streams", 1))
        set_("shard", parse_shard(self.shard))
        set_("draft", bool(self.draft))
        set_("compile", bool(self.compile))

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def make(cls, data_or_config: "ExtractConfig | str | os.PathLike | None" = None, **settings) -> "ExtractConfig":
        """``extract("photos", model=...)``, ``extract(cfg)`` or ``extract(cfg, workers=0)``."""
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown extraction setting(s): {', '.join(sorted(unknown))}")
        if isinstance(data_or_config, ExtractConfig):
            return replace(data_or_config, **settings)
        if data_or_config is not None:
            settings["data"] = data_or_config
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shard"] = list(self.shard) if self.shard else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractConfig":
        """Read a stored record; older files stored a subset of these keys (the rest default)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """The settings that change the numbers, as given (``auto`` unresolved); no views is left out,
        as in the id (a sweep's key made before views existed stays the same)."""
        return {name: getattr(self, name) for name in IDENTITY if not (name == "views" and self.views == "none")}

    @staticmethod
    def recipe_of(views) -> str:
        """A views recipe in its canonical spelling (``rrc:8`` -> ``rrc:8:seed=0:scale=0.25``)."""
        try:
            return str(Views.parse(views))
        except ViewsError as err:
            raise FeatcacheError(str(err)) from None

    def viewing(self):
        """The ``Views`` record (part of the id unless "none")."""
        return Views.parse(self.views)

    # -- what it means -----------------------------------------------------------------------------
    def decoding(self):
        """The ``Decode`` record (part of the id); the gpu decoder has no draft mode."""
        return Decode(draft=self.draft and self.decode == "cpu", decoder=self.decode)

    def command(self, precision: str | None = None) -> str:
        """The ``featcache extract`` command line that makes exactly this feature set.

        ``precision``: the precision the set was actually made with. It is spelled out, because
        ``auto`` resolves differently on a machine with or without a GPU.
        """
        default = ExtractConfig()
        parts = ["featcache extract", "--data", shlex.quote(self.data), "--model", shlex.quote(self.model)]
        if self.labels:
            parts += ["--labels", shlex.quote(self.labels)]
        for name in ("weights", "layer", "pool", "image_size", "dtype"):
            value = getattr(self, name)
            if value != getattr(default, name):
                parts += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
        chosen = precision or self.precision
        if chosen != default.precision:
            parts += ["--precision", chosen]
        if not self.draft and self.decode == "cpu":
            parts.append("--no-draft")
        if self.decode != default.decode:
            parts += ["--decode", self.decode]
        if self.views != default.views:
            parts += ["--views", self.views]
        if self.cache_dir:
            parts += ["--cache-dir", shlex.quote(self.cache_dir)]
        return " ".join(parts)

    @property
    def label(self) -> str:
        w = "" if self.weights.upper() == "DEFAULT" else f"@{self.weights}"
        return f"{self.model}{w} {self.layer or 'default'} pool={self.pool}"
