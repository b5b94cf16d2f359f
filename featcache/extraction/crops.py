"""The one crop implementation: the preprocessing's resize and crop, and the views cut from an image.

CPU decoding (PIL images in the workers), GPU decoding (uint8 (3, H, W) tensors on the device) and
views all call ``plain``: torchvision's functional transforms and timm's resize take either kind, so
the three paths cannot drift apart. They differ by rounding only (Pillow's fixed point vs float
tensors), which the decoder's entry in the feature-set id records. Crop modes, as the
``Preprocess`` record states them:

* ``center``: resize the shorter side (an int ``resize_size``) or cover a (height, width) box
  keeping the aspect ratio (timm), then take the centre crop (padded with 0 if the image is smaller);
* ``squash``: resize to exactly (height, width), ignoring the aspect ratio, then crop;
* ``border``: fit the whole image inside the box keeping the aspect ratio, then pad to the crop with
  the mean colour (timm).
"""

from __future__ import annotations

import hashlib
import math

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from featcache.backbones.spec import Preprocess
from featcache.config.views import RATIO, Views


def resized(img, p: Preprocess, interpolation):
    """The resize step of ``p``'s crop mode."""
    if p.crop_mode == "squash":
        return F.resize(img, list(p.resize_hw), interpolation=interpolation, antialias=True)
    if p.crop_mode == "center" and isinstance(p.resize_size, int):
        return F.resize(img, [p.resize_size], interpolation=interpolation, antialias=True)
    # timm's own resize: cover a (height, width) box (center), or fit inside it (border)
    from timm.data.transforms import ResizeKeepRatio  # timm: loaded on first use (its import sets up huggingface_hub)

    return ResizeKeepRatio(p.resize_hw, longest=1.0 if p.crop_mode == "border" else 0.0, interpolation=p.interpolation)(img)


def plain(img, p: Preprocess, interpolation) -> torch.Tensor:
    """An RGB image (PIL, or uint8 (3, H, W) tensor) -> uint8 (3, crop_h, crop_w): the view without
    augmentation, what a feature set without views holds."""
    img = resized(img, p, interpolation)
    if p.crop_mode == "border":
        img = _crop_or_pad(img, p.crop_hw, [round(255 * m) for m in p.mean])
    else:
        img = F.center_crop(img, list(p.crop_hw))
    return img if isinstance(img, torch.Tensor) else F.pil_to_tensor(img)


def _crop_or_pad(img, crop_hw: tuple[int, int], fill: list[int]):
    """timm's ``center_crop_or_pad``: the centre crop, padded with the mean colour where the image is smaller.
    A tensor is padded here (torchvision pads tensors with one value only), with timm's offsets."""
    if not isinstance(img, torch.Tensor):
        from timm.data.transforms import center_crop_or_pad  # timm: loaded on first use

        return center_crop_or_pad(img, list(crop_hw), fill=fill)
    (h, w), (H, W) = crop_hw, img.shape[-2:]
    if h > H or w > W:
        top, left = (h - H) // 2 if h > H else 0, (w - W) // 2 if w > W else 0
        padded = torch.tensor(fill, dtype=img.dtype, device=img.device).view(-1, 1, 1).expand(img.shape[0], max(h, H), max(w, W))
        padded = padded.clone()
        padded[:, top:top + H, left:left + W] = img
        img, (H, W) = padded, padded.shape[-2:]
        if (H, W) == (h, w):
            return img
    return F.crop(img, int(round((H - h) / 2.0)), int(round((W - w) / 2.0)), h, w)


def corners(img: Image.Image, p: Preprocess, interpolation) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right crops of the resized image (the centre crop is
    the plain view): ``crops:5``, as torchvision's ``FiveCrop`` after the resize."""
    img = resized(img, p, interpolation)
    h, w = p.crop_hw
    W, H = img.size
    if h > H or w > W:  # a resize smaller than the crop: the centre crop pads; corners would too
        img = F.center_crop(img, [max(h, H), max(w, W)])
        W, H = img.size
    return [F.pil_to_tensor(F.crop(img, top, left, h, w)) for top, left in ((0, 0), (0, W - w), (H - h, 0), (H - h, W - w))]


def cut(views: Views, img: Image.Image, p: Preprocess, interpolation, content: bytes | None = None) -> list[torch.Tensor]:
    """The views of a decoded RGB PIL image as uint8 (3, H, W) tensors, view 0 (the plain crop) first.

    ``content``: the file's bytes (rrc draws its crops from their hash)."""
    first = plain(img, p, interpolation)
    if views.kind == "none":
        return [first]
    if views.kind == "flip":
        return [first, first.flip(-1)]
    if views.kind == "crops":
        out = [first] + corners(img, p, interpolation)
        return out + [v.flip(-1) for v in out] if views.n == 10 else out
    draws = Draws(views.seed, content if content is not None else b"")
    height, width = p.crop_hw
    out = [first]
    for view in range(1, views.n):
        top, left, h, w = random_resized_crop(img.height, img.width, (views.scale, 1.0), RATIO, draws, view)
        crop = F.pil_to_tensor(F.resized_crop(img, top, left, h, w, [height, width], interpolation=interpolation, antialias=True))
        out.append(crop.flip(-1) if draws.uniform(view, "flip") < 0.5 else crop)
    return out


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
