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


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, center-crop a square, scale to [0, 1], normalise."""

    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def with_image_size(self, size: int) -> "Preprocess":
        """Keep the weights' resize/crop ratio at a new crop size (``--image-size``)."""
        ratio = self.resize_size / self.crop_size
        return replace(self, crop_size=int(size), resize_size=int(math.floor(size * ratio + 0.5)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: d[k] for k in ("resize_size", "crop_size", "interpolation", "mean", "std")})


@dataclass(frozen=True)
class Weights:
    """Which parameters fill the architecture.

    ``identity`` names the numbers (an enum, a package file, a file hash); ``path`` only says where a
    local file lies, so moving the file does not change the feature-set id.
    """

    kind: str  # "pretrained" | "none" | "file"
    identity: str
    path: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Backbone:
    name: str  # as the user writes it: vgg16, timm:resnet50, efficientnet_lite0
    family: str  # which family builds it: torchvision | timm | builtin
    arch: str  # the family's constructor name
    weights: Weights
    preprocess: Preprocess


@dataclass(frozen=True)
class ExtractorSpec:
    """A backbone cut at one layer with one pooling: everything that fixes the feature numbers."""

    backbone: Backbone
    layer: str
    pool: str  # none | avg | max
    feature_shape: tuple[int, ...]

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
