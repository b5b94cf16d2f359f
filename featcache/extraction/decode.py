"""Decoding any image a user's folder holds into the backbone's input, or a reason why not.

Every mode Pillow opens is turned into RGB the same way on every path (extraction, prediction):
EXIF orientation applied first, alpha composited over white, 16-bit samples scaled (not clipped)
to 8 bits. Decoding errors never escape as exceptions from a worker: they come back as reasons.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from featcache.backbones.spec import Preprocess

# Bump when decoding changes the pixels it produces: it is part of the feature-set id.
DECODE_VERSION = 1
DECODERS = ("cpu", "gpu")


@dataclass(frozen=True)
class Decode:
    """How files become pixels.

    ``decoder="cpu"``: Pillow in the DataLoader workers, then Pillow's resize and crop; ``draft`` lets
    libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale. ``decoder="gpu"``: the workers only read
    the bytes and the main process decodes JPEGs as a batch with ``torchvision.io.decode_jpeg`` on
    the extraction device, then resizes and crops the tensors there (featcache/jpeg.py); other files
    take the CPU path at full size. It has no draft mode.
    """

    draft: bool = True
    decoder: str = "cpu"

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {self.decoder!r}")
        if self.decoder == "gpu" and self.draft:
            raise ValueError("the gpu decoder has no draft mode: use Decode(draft=False, decoder='gpu')")

    def key(self) -> dict:
        key = {"version": DECODE_VERSION, "draft": self.draft, "alpha": "over-white", "exif": True}
        if self.decoder != "cpu":  # the CPU decoder's key predates this field: every existing id stays valid
            key["decoder"] = "torchvision.io.decode_jpeg+tensor-resize"
        return key

    @classmethod
    def from_key(cls, key: dict) -> "Decode":
        """The record a stored ``key()`` was made from (prediction decodes new images the same way)."""
        if key.get("version") != DECODE_VERSION:
            raise ValueError(f"decode version {key.get('version')!r} is not {DECODE_VERSION}")
        decoder = "gpu" if key.get("decoder") else "cpu"
        decode = cls(draft=bool(key.get("draft", decoder == "cpu")), decoder=decoder)
        if decode.key() != key:
            raise ValueError(f"unknown decode settings {key!r}")
        return decode


class BadImage(Exception):
    """An image that cannot be used; ``str()`` is the reason shown to the user."""


def open_rgb(path, min_size: int | None = None, draft: bool = True) -> Image.Image:
    """``path`` (a file name or a binary file object) as an RGB image, EXIF orientation applied."""
    with pillow_errors():
        img = Image.open(path)
        if draft and min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        pass
    return to_rgb(img)


@contextmanager
def pillow_errors():
    """Turn what Pillow and the file system raise for an unusable file into a ``BadImage`` reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombWarning as err:
        raise BadImage(f"too large to decode safely ({_pixels(err)} > Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too large to decode safely ({_pixels(err)} > 2x Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (unknown format or corrupt header)") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except FileNotFoundError:
        raise BadImage("file disappeared during extraction") from None
    except OSError as err:
        text = str(err).lower()
        if "truncated" in text or "premature" in text or "broken" in text:
            raise BadImage("truncated or corrupt image data") from None
        if getattr(err, "errno", None) and err.strerror:
            raise BadImage(err.strerror.lower()) from None
        raise BadImage(f"cannot decode: {str(err)[:100]}") from None
    except (SyntaxError, ValueError, EOFError) as err:  # Pillow raises these for some corrupt files
        raise BadImage(f"corrupt image: {str(err)[:100]}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr = np.clip(arr, 0, top) * 255 // top
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _pixels(err: Exception) -> str:
    import re

    match = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(match[1]):,} pixels" if match else "too many pixels"


class Transform:
    """PIL RGB -> uint8 (3, height, width) tensor: resize, then crop as ``Preprocess.crop_mode`` says.

    Normalisation happens on whole batches (``normalize``), on the device, so workers ship uint8.
    """

    def __init__(self, preprocess: Preprocess, decode: Decode = Decode(), views=None):
        from torchvision.transforms import InterpolationMode

        from featcache.config.views import Views

        self.preprocess = preprocess
        self.decode = decode
        self.views = Views.parse(views)
        self.views.check(preprocess)
        self.interpolation = InterpolationMode(preprocess.interpolation)

    def __call__(self, path) -> torch.Tensor:
        """``path``: a file name or a binary file object. With views: a (views, 3, H, W) stack cut
        from one decode of the image, view 0 the plain crop."""
        if self.views.kind == "none":
            return self.plain(open_rgb(path, min_size=max(self.preprocess.resize_hw), draft=self.decode.draft))
        content = None
        if self.views.kind == "rrc":  # its crops are drawn from the file's bytes
            content = _read_bytes(path)
            path = io.BytesIO(content)
        img = open_rgb(path, min_size=self.views.draft_size(self.preprocess), draft=self.decode.draft)
        return torch.stack(self.views.cut(img, self.plain, self.preprocess, self.interpolation, content))

    def plain(self, img: Image.Image) -> torch.Tensor:
        """An RGB image -> the preprocessing's crop (the view without augmentation)."""
        from torchvision.transforms.v2 import functional as F

        p = self.preprocess
        if p.crop_mode == "squash":
            img = F.resize(img, list(p.resize_hw), interpolation=self.interpolation, antialias=True)
        elif p.crop_mode == "center" and isinstance(p.resize_size, int):
            img = F.resize(img, [p.resize_size], interpolation=self.interpolation, antialias=True)
        else:  # timm's own resize: cover a (height, width) crop (center), or fit inside it (border)
            from timm.data.transforms import ResizeKeepRatio, center_crop_or_pad

            longest = 1.0 if p.crop_mode == "border" else 0.0
            img = ResizeKeepRatio(p.resize_hw, longest=longest, interpolation=p.interpolation)(img)
            if p.crop_mode == "border":
                return F.pil_to_tensor(center_crop_or_pad(img, list(p.crop_hw), fill=[round(255 * m) for m in p.mean]))
        img = F.center_crop(img, list(p.crop_hw))
        return F.pil_to_tensor(img)


def _read_bytes(path) -> bytes:
    with pillow_errors():
        if hasattr(path, "read"):
            return path.read()
        with open(path, "rb") as f:
            return f.read()


def normalize(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, (x / 255 - mean) / std in one pass."""
    mean = torch.tensor(preprocess.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(preprocess.std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return batch.float().sub_(mean).div_(std)


class ImageRows(torch.utils.data.Dataset):
    """Manifest entries -> (entry index, uint8 tensor or None, reason or None).

    ``transform``: any picklable callable path -> item (a ``Transform``; ``jpeg.read`` for --decode gpu)
    that raises ``BadImage`` for an unusable file, so both decode paths share the bad-file rules."""

    def __init__(self, files: list[str], indices: list[int], transform, known_bad: dict[int, str] | None = None):
        self.files, self.indices, self.transform = files, indices, transform
        self.known_bad = known_bad or {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        if index in self.known_bad:
            return index, None, self.known_bad[index]
        return (index, *crop_or_reason(self.transform, self.files[i]))


def crop_or_reason(transform, path) -> tuple[object | None, str | None]:
    try:
        return transform(path), None
    except BadImage as err:
        return None, str(err)
    except Exception as err:  # a decoder bug must cost one image, not the whole extraction
        return None, f"cannot decode: {type(err).__name__}: {str(err)[:80]}"


def collate(items):
    """(entry indices, uint8 batch, bad rows); an image's views are consecutive rows of the batch."""
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, r) for i, t, r in items if t is None]
    if good:
        indices = torch.tensor([i for i, _ in good], dtype=torch.int64)
        batch = torch.stack([t for _, t in good])
        return indices, batch.flatten(0, 1) if batch.dim() == 5 else batch, bad
    return torch.empty(0, dtype=torch.int64), None, bad

