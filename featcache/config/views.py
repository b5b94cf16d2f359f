"""Augmented views: several crops of one decoded image, each a row of the feature set.

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

import hashlib
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

    # -- cutting ----------------------------------------------------------------------------------
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

    def cut(self, img, plain, preprocess, interpolation, content: bytes | None = None) -> list:
        """The views of a decoded RGB PIL image as uint8 (3, H, W) tensors, view 0 first.

        ``plain``: the preprocessing as a function of the image (resize + crop, the view without
        augmentation). ``content``: the file's bytes (rrc draws its crops from their hash).
        """
        from torchvision.transforms.v2 import functional as F

        first = plain(img)
        if self.kind == "none":
            return [first]
        if self.kind == "flip":
            return [first, first.flip(-1)]
        if self.kind == "crops":
            views = [first] + _corner_crops(img, preprocess, interpolation)
            return views + [v.flip(-1) for v in views] if self.n == 10 else views
        draws = Draws(self.seed, content if content is not None else b"")
        height, width = preprocess.crop_hw
        out = [first]
        for view in range(1, self.n):
            top, left, h, w = random_resized_crop(img.height, img.width, (self.scale, 1.0), RATIO, draws, view)
            crop = F.pil_to_tensor(F.resized_crop(img, top, left, h, w, [height, width], interpolation=interpolation, antialias=True))
            out.append(crop.flip(-1) if draws.uniform(view, "flip") < 0.5 else crop)
        return out


def _corner_crops(img, preprocess, interpolation) -> list:
    """Top-left, top-right, bottom-left, bottom-right crops of the resized image (the centre crop
    is the plain view)."""
    from torchvision.transforms.v2 import functional as F

    p = preprocess
    if p.crop_mode == "squash":
        img = F.resize(img, list(p.resize_hw), interpolation=interpolation, antialias=True)
    elif isinstance(p.resize_size, int):
        img = F.resize(img, [p.resize_size], interpolation=interpolation, antialias=True)
    else:
        from timm.data.transforms import ResizeKeepRatio

        img = ResizeKeepRatio(p.resize_hw, longest=0.0, interpolation=p.interpolation)(img)
    h, w = p.crop_hw
    W, H = img.size
    if h > H or w > W:  # a resize smaller than the crop: the centre crop pads; corners would too
        img = F.center_crop(img, [max(h, H), max(w, W)])
        W, H = img.size
    corners = [F.crop(img, top, left, h, w) for top, left in ((0, 0), (0, W - w), (H - h, 0), (H - h, W - w))]
    return [F.pil_to_tensor(c) for c in corners]


class Draws:
    """Uniform numbers in [0, 1) keyed by (seed, file content, view, name, try): no state, no worker
    order, no dependence on NumPy's or torch's generator streams."""

    def __init__(self, seed: int, content: bytes):
        self.prefix = hashlib.sha256(content).digest() + f"|{seed}|".encode()

    def uniform(self, view: int, name: str, attempt: int = 0) -> float:
        digest = hashlib.blake2b(self.prefix + f"{view}|{name}|{attempt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64


def random_resized_crop(height: int, width: int, scale, ratio, draws: Draws, view: int) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision's ``RandomResizedCrop.get_params``, drawing from ``draws``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * draws.uniform(view, "area", attempt))
        aspect = math.exp(log_lo + (log_hi - log_lo) * draws.uniform(view, "ratio", attempt))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(draws.uniform(view, "top", attempt) * (height - h + 1))
            left = int(draws.uniform(view, "left", attempt) * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop within the ratio bounds
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ------------------------------------------------------------------------------------ test time
AT_TEST = ("mean", "first")


def decisions(estimator, X):
    """What test-time averaging averages: ``predict_proba`` where the head has one, else the
    decision values (n,) or (n, classes)."""
    import numpy as np

    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(X), dtype=np.float64), True
    return np.asarray(estimator.decision_function(X), dtype=np.float64), False


def aggregate(estimator, X, n_views: int, how: str = "mean"):
    """(labels, confidences) per image of rows grouped by image (``n_views`` consecutive rows each).

    ``how="mean"``: average the head's probabilities (or decision values) over the views, then take
    the best class; ``"first"``: view 0 only (no test-time augmentation). With one view both are
    ``classifiers.scores``.
    """
    import numpy as np

    from classifiers import scores
    from classifiers.base import proba_from_decision

    if how not in AT_TEST:
        raise ViewsError(f"unknown --views-at-test {how!r}: use mean or first")
    n_rows = len(X)
    if n_views < 1 or n_rows % n_views:
        raise ViewsError(f"{n_rows} rows are not whole images of {n_views} views each")
    if n_views == 1 or how == "first":
        return scores(estimator, X[::n_views])
    out, is_proba = decisions(estimator, X)
    out = out.reshape((n_rows // n_views, n_views) + out.shape[1:]).mean(axis=1)
    proba = out if is_proba else proba_from_decision(out)
    best = proba.argmax(axis=1)
    return np.asarray(estimator.classes_)[best], proba[np.arange(len(best)), best]


class ImageScorer:
    """A scikit-learn scorer ``(estimator, X, y) -> accuracy`` per image, for CV folds whose rows
    come whole images at a time, views in order (what ``fit`` passes a grid search)."""

    def __init__(self, n_views: int, how: str = "mean"):
        self.n_views, self.how = n_views, how

    def __call__(self, estimator, X, y) -> float:
        import numpy as np

        labels, _ = aggregate(estimator, X, self.n_views, self.how)
        y = np.asarray(y).reshape(-1, self.n_views)
        if (y != y[:, :1]).any():
            raise ViewsError("rows of one image carry different labels: the rows are not grouped by image")
        return float(np.mean(labels == y[:, 0]))
