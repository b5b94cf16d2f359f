"""Decoding image files into the backbone's input: uint8 crops in the DataLoader workers, normalised on the device.

Decoding errors never escape as exceptions from a worker: they come back as reasons (``BadImage``).
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from featcache.backbones.spec import Preprocess
from featcache.config.decode import Decode
from featcache.config.views import Views
from featcache.extraction import crops
from featcache.extraction.images import BadImage, open_rgb, pillow_errors


class Transform:
    """A file -> uint8 (3, height, width) tensor: decode, resize, then crop as ``Preprocess.crop_mode``
    says (featcache/extraction/crops.py); with views, a (views, 3, H, W) stack cut from one decode.

    Normalisation happens on whole batches (``normalize``), on the device, so workers ship uint8.
    """

    def __init__(self, preprocess: Preprocess, decode: Decode = Decode(), views=None):
        self.preprocess = preprocess
        self.decode = decode
        self.views = Views.parse(views)
        self.interpolation = InterpolationMode(preprocess.interpolation)

    def __call__(self, path) -> torch.Tensor:
        """``path``: a file name or a binary file object."""
        if self.views.kind == "none":
            return self.plain(open_rgb(path, min_size=max(self.preprocess.resize_hw), draft=self.decode.draft))
        content = None
        if self.views.kind == "rrc":  # its crops are drawn from the file's bytes
            content = _read_bytes(path)
            path = io.BytesIO(content)
        img = open_rgb(path, min_size=self.views.draft_size(self.preprocess), draft=self.decode.draft)
        return torch.stack(crops.cut(self.views, img, self.preprocess, self.interpolation, content))

    def plain(self, img: Image.Image) -> torch.Tensor:
        """An RGB image -> the preprocessing's crop (the view without augmentation)."""
        return crops.plain(img, self.preprocess, self.interpolation)


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

