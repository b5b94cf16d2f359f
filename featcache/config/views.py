"""Augmented views: the recipe record (what is cut is featcache/extraction/crops.py; how the views of
a test image are scored is featcache/fitting/evaluation.py). Each view is a row of the feature set.

A recipe says how many views every image gets and how each is cut from the decoded image (in the
DataLoader workers: one decode per image, one forward pass per view). View 0 is always the plain
preprocessing (the crop a feature set without views holds), so "the first view" means "no
test-time augmentation":

* ``none``: one view, the plain crop (no views: every id made before views existed is unchanged);
* ``flip``: 2 views, the plain crop and its horizontal mirror;
* ``crops:5``: the centre crop and the four corner crops of the resized image (as torchvision's
  ``FiveCrop``); ``crops:10`` adds their mirrors (``TenCrop``);
* ``rrc:N[:seed=S][:scale=LO]``: the plain crop and N-1 random resized crops (torchvision's
  ``RandomResizedCrop`` algorithm: area fraction in [LO, 1], aspect ratio in [3/4, 4/3]), each
  mirrored with probability 1/2. The draws come from a counter-based generator keyed by the seed,
  the image's bytes and the view number: the same file gives the same views in any worker, batch,
  shard, resumed run, incremental update or ``predict`` call, wherever the file lies.

The recipe and its parameters enter the feature-set id (``key()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VIEWS_VERSION = 1  # bump when a recipe cuts different pixels
KINDS = ("none", "flip", "crops", "rrc")
RATIO = (3 / 4, 4 / 3)
DEFAULT_SCALE = 0.25  # lower bound of the area fraction of rrc; bench/accuracy.py compared 0.08 and 0.25
SPEC_HELP = "none, flip, crops:5, crops:10 or rrc:N[:seed=S][:scale=LO] (e.g. rrc:8)"


class ViewsError(ValueError):
    """A recipe that cannot be parsed or used; ``str()`` is a one-line message."""


@dataclass(frozen=True)
class Views:
    kind: str = "none"
    n: int = 1
    seed: int = 0
    scale: float = DEFAULT_SCALE

    # -- parsing ----------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | Views | None") -> "Views":
        """``none | flip | crops:5 | crops:10 | rrc:N[:seed=S][:scale=LO]`` -> a recipe."""
        if isinstance(spec, Views):
            return spec
        text = str(spec if spec is not None else "none").strip().lower()
        kind, *rest = text.split(":")
        if kind not in KINDS:
            raise ViewsError(f"unknown views recipe {spec!r}: use {SPEC_HELP}")
        if kind in ("none", "flip"):
            if rest:
                raise ViewsError(f"views recipe {spec!r}: {kind} takes no parameters ({SPEC_HELP})")
            return cls(kind, 1 if kind == "none" else 2)
        if not rest or not rest[0].isdigit():
            raise ViewsError(f"views recipe {spec!r}: say how many views, e.g. {kind}:{5 if kind == 'crops' else 8}")
        n = int(rest[0])
        options = {}
        for item in rest[1:]:
            name, eq, value = item.partition("=")
            if kind != "rrc" or not eq or name not in ("seed", "scale") or name in options:
                raise ViewsError(f"views recipe {spec!r}: unknown option {item!r} ({SPEC_HELP})")
            options[name] = value
        if kind == "crops":
            if n not in (5, 10):
                raise ViewsError(f"views recipe {spec!r}: crops takes 5 (centre + corners) or 10 (and their mirrors)")
            return cls("crops", n)
        if not 2 <= n <= 64:
            raise ViewsError(f"views recipe {spec!r}: rrc takes 2 to 64 views (view 0 is the plain crop)")
        try:
            seed = int(options.get("seed", 0))
            scale = float(options.get("scale", DEFAULT_SCALE))
        except ValueError:
            raise ViewsError(f"views recipe {spec!r}: seed must be a whole number and scale a number in (0, 1]") from None
        if seed < 0 or not 0 < scale <= 1:
            raise ViewsError(f"views recipe {spec!r}: seed must be >= 0 and scale in (0, 1]")
        return cls("rrc", n, seed, scale)

    def __str__(self) -> str:
        if self.kind in ("none", "flip"):
            return self.kind
        if self.kind == "crops":
            return f"crops:{self.n}"
        return f"rrc:{self.n}:seed={self.seed}:scale={self.scale:g}"

    @property
    def count(self) -> int:
        """Rows per image."""
        return self.n

    def key(self) -> dict | None:
        """What enters the feature-set id; None for ``none`` (ids made before views are unchanged)."""
        if self.kind == "none":
            return None
        key = {"version": VIEWS_VERSION, "recipe": self.kind, "n": self.n}
        if self.kind == "rrc":
            key.update(seed=self.seed, scale=[self.scale, 1.0], ratio=[round(r, 6) for r in RATIO], flip=0.5)
        return key

    # -- what the preprocessing allows -------------------------------------------------------------
    def check(self, preprocess) -> None:
        """Refuse a recipe the model's preprocessing cannot serve."""
        if self.kind == "crops" and preprocess.crop_mode == "border":
            raise ViewsError("--views crops:N cuts corners of the resized image; this model's preprocessing fits the "
                             "whole image inside a padded crop (crop mode 'border'): use flip or rrc:N")

    def draft_size(self, preprocess) -> int:
        """The smallest side a JPEG may be draft-decoded to: large enough that the smallest random
        crop still has the model's input resolution."""
        base = max(preprocess.resize_hw)
        if self.kind != "rrc":
            return base
        return max(base, math.ceil(max(preprocess.crop_hw) / math.sqrt(self.scale)))
