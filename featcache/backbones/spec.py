"""The records that pin down what a backbone computes: architecture, weights and input contract.

One frozen record per backbone (the torchvision ``Weights`` / timm ``PretrainedCfg`` idea): the
preprocessing is built from it and from nowhere else, so it cannot drift from the weights, and its
``key()`` is exactly what the feature-set id hashes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash", "border")  # timm's names


@dataclass(frozen=True)
class Preprocess:
    """Resize, crop to the input size, scale to [0, 1], normalise.

    Sizes are an int (a square) or (height, width). ``crop_mode`` is timm's: ``center`` resizes the
    shorter side to ``resize_size`` (for a (height, width) size: just enough to cover it) and crops
    the center; ``squash`` resizes each edge to ``resize_size``, ignoring the aspect ratio, then
    crops; ``border`` fits the whole image inside ``resize_size`` and pads it (mean colour) to the crop.
    """

    resize_size: int | tuple[int, int] = 256
    crop_size: int | tuple[int, int] = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_mode: str = "center"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}")
        object.__setattr__(self, "resize_size", _size(self.resize_size))
        object.__setattr__(self, "crop_size", _size(self.crop_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def crop_hw(self) -> tuple[int, int]:
        return _hw(self.crop_size)

    @property
    def resize_hw(self) -> tuple[int, int]:
        return _hw(self.resize_size)

    def with_image_size(self, size: int) -> "Preprocess":
        """Keep the weights' resize/crop ratio at a new (square) crop size (``--image-size``)."""
        ratio = self.resize_hw[0] / self.crop_hw[0]
        return replace(self, crop_size=int(size), resize_size=int(math.floor(size * ratio + 0.5)))

    def to_dict(self) -> dict:
        """The record as the feature-set key holds it; a center crop omits ``crop_mode``, so records
        made before crop modes existed keep their bytes (and their feature-set ids)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        for name in ("resize_size", "crop_size"):
            if isinstance(d[name], tuple):
                d[name] = list(d[name])
        if self.crop_mode == "center":
            del d["crop_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        keys = ("resize_size", "crop_size", "interpolation", "mean", "std", "crop_mode")
        return cls(**{k: d[k] for k in keys if k in d})


def _size(value) -> int | tuple[int, int]:
    """An int for a square, else (height, width)."""
    if isinstance(value, (list, tuple)):
        h, w = (int(v) for v in value)
        return h if h == w else (h, w)
    return int(value)


def _hw(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


@dataclass(frozen=True)
class Weights:
    """Which parameters fill the architecture.

    ``identity`` names the numbers (an enum, a package file, a file hash); ``path`` only says where a
    local file lies, so moving the file does not change the feature-set id.
    """

    kind: str  # "pretrained" | "none" | "file"
    identity: str
    path: str | None = field(default=None, compare=False)
    # The source's own name for pretrained weights when it differs from the architecture (timm:
    # "resnet50.tv_in1k"): what is built. Like ``path`` it is not part of the identity.
    name: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Backbone:
    name: str  # as the user writes it: vgg16, timm:resnet50, efficientnet_lite0
    family: str  # which family builds it: torchvision | timm | builtin
    arch: str  # the family's constructor name
    weights: Weights
    preprocess: Preprocess


@dataclass(frozen=True)
class Tokens:
    """How a token model's sequence is laid out at the input size: ``prefix`` tokens (class, register or
    distillation tokens; the class token first when there is one) before the patch tokens, ``length`` in all,
    as the model's ``layer`` gives them (its last token sequence, after its final norm where it has one)."""

    prefix: int
    class_token: bool
    length: int
    layer: str


@dataclass(frozen=True)
class ExtractorSpec:
    """A backbone cut at one layer with one pooling: everything that fixes the feature numbers."""

    backbone: Backbone
    layer: str
    pool: str  # one of extract_config.POOLS
    feature_shape: tuple[int, ...]
    # The model's token layout (None for maps): fixed by the architecture and the input size, both in the key.
    tokens: Tokens | None = None

    def key(self) -> dict:
        b = self.backbone
        return {
            "family": b.family,
            "arch": b.arch,
            "weights": b.weights.identity,
            "layer": self.layer,
            "pool": self.pool,
            "preprocess": b.preprocess.to_dict(),
        }
