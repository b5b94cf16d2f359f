"""``--decode gpu``: DataLoader workers read the bytes, the extraction device decodes whole batches.

On a GPU the backbone outruns JPEG decoding on the CPU by far, so the decode moves to the device:

* a worker reads each file and looks at its header with Pillow (no pixel is decoded): a JPEG in RGB
  or grayscale that ends with its end-of-image marker is shipped as bytes plus its EXIF
  orientation. Anything else (PNG and other formats, CMYK JPEGs, a JPEG cut short or with data after
  its end marker) takes the CPU path in the worker, at full size (no draft): a uint8 crop, or a
  reason exactly as with ``--decode cpu``. A truncated JPEG is therefore skipped with Pillow's
  reason, never half-decoded;
* the main process decodes the batch's JPEGs with one ``torchvision.io.decode_jpeg(list, device=...)``
  call (nvjpeg on CUDA, libjpeg on the CPU), applies the orientation, resizes the shorter side
  (antialiased, the preprocessing record's interpolation) and centre-crops each image on the device.
  If the batch call fails, the images are decoded one by one, and one that still fails is decoded by
  Pillow from its bytes (or skipped with Pillow's reason).

The crops differ from Pillow's by rounding only (resize in float on tensors vs Pillow's fixed point);
the feature-set id records the decoder, so the two never share a cache entry.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
import torchvision
import torchvision.io
from PIL import Image
from torchvision.transforms import InterpolationMode

from featcache.backbones.spec import Preprocess
from featcache.config.decode import Decode
from featcache.core.errors import FeatcacheError
from featcache.extraction import crops
from featcache.extraction.decode import ImageRows, Transform, crop_or_reason
from featcache.extraction.images import pillow_errors

ORIENTATION_TAG = 0x0112
EOI = b"\xff\xd9"


@dataclass(frozen=True)
class Jpeg:
    """A worker's answer for a JPEG the device will decode: its bytes and its EXIF orientation."""

    data: bytes
    orientation: int = 1


def read(path: str, fallback: Transform) -> Jpeg | torch.Tensor:
    """A JPEG for the device, or the CPU path's uint8 crop; raises ``BadImage`` with the reason."""
    with pillow_errors():
        with open(path, "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))  # header only: format, mode, size (the decompression bomb check)
        fmt, mode = img.format, img.mode
        orientation = exif_orientation(img)
    if fmt == "JPEG" and mode in ("RGB", "L") and data.rstrip(b"\0").endswith(EOI):
        return Jpeg(data, orientation)
    return fallback(io.BytesIO(data))


def exif_orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable (as on the CPU path)
        return 1
    return value if 1 <= value <= 8 else 1


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as displayed: what ``PIL.ImageOps.exif_transpose`` does, for each EXIF orientation."""
    hw = (-2, -1)
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(hw)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return img.rot90(-1, hw)
    if orientation == 7:
        return img.transpose(-2, -1).flip(hw)
    if orientation == 8:
        return img.rot90(1, hw)
    return img


class JpegRows(ImageRows):
    """Manifest entries -> (entry index, ``Jpeg`` or uint8 crop or None, reason or None): the CPU path's
    rows with ``read`` in place of the transform (JPEGs travel as bytes, anything else as its crop)."""

    def __init__(self, files: list[str], indices: list[int], preprocess: Preprocess, known_bad: dict[int, str] | None = None):
        super().__init__(files, indices, functools.partial(read, fallback=Transform(preprocess, Decode(draft=False))), known_bad)


@dataclass
class JpegBatch:
    """One batch from the workers: JPEG bytes for the device and crops made on the CPU path.

    ``jpeg_rows[k]`` says whether good row k is a JPEG (the next one in ``data``) or a CPU crop (the
    next one in ``crops``). All the bytes travel as one tensor, so pinning it is a single copy.
    """

    data: torch.Tensor  # uint8, every JPEG's bytes concatenated
    offsets: list[int]  # JPEG k is data[offsets[k]:offsets[k + 1]]
    orientations: list[int]
    crops: torch.Tensor | None  # uint8 (n, 3, crop, crop)
    jpeg_rows: list[bool]

    def pin_memory(self) -> "JpegBatch":  # called by the DataLoader's pin-memory thread
        return replace(self, data=self.data.pin_memory(), crops=None if self.crops is None else self.crops.pin_memory())

    def jpegs(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets, self.offsets[1:])]

    def __len__(self) -> int:
        return len(self.jpeg_rows)


def collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    if not good:
        return torch.empty(0, dtype=torch.int64), None, bad
    jpegs = [x for _, x in good if isinstance(x, Jpeg)]
    crops = [x for _, x in good if not isinstance(x, Jpeg)]
    offsets = np.cumsum([0] + [len(j.data) for j in jpegs]).tolist()
    data = torch.from_numpy(np.frombuffer(b"".join(j.data for j in jpegs), dtype=np.uint8).copy())
    batch = JpegBatch(data=data, offsets=offsets, orientations=[j.orientation for j in jpegs],
                      crops=torch.stack(crops) if crops else None, jpeg_rows=[isinstance(x, Jpeg) for _, x in good])
    return torch.tensor([i for i, _ in good], dtype=torch.int64), batch, bad


class DeviceDecoder:
    """``JpegBatch`` -> uint8 (n, 3, crop, crop) on ``device``, plus the rows that could not be used."""

    def __init__(self, preprocess: Preprocess, device: torch.device):
        self.preprocess, self.device = preprocess, device
        self.interpolation = InterpolationMode(preprocess.interpolation)
        self.fallback = Transform(preprocess, Decode(draft=False))

    def __call__(self, indices: torch.Tensor, batch: JpegBatch) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
        jpegs = batch.jpegs()
        decoded = decode_many(jpegs, self.device)
        cpu_crops = None if batch.crops is None else batch.crops.to(self.device, non_blocking=True)
        keep, crops, bad = [], [], []
        j = c = 0
        for row, is_jpeg in enumerate(batch.jpeg_rows):
            index = int(indices[row])
            if not is_jpeg:
                crop, c = cpu_crops[c], c + 1
            elif decoded[j] is not None:
                crop = self.crop(orient(decoded[j], batch.orientations[j]))
                j += 1
            else:  # the device decoder refused this file: Pillow decides, as on the CPU path
                crop, reason = crop_or_reason(self.fallback, io.BytesIO(jpegs[j].numpy().tobytes()))
                j += 1
                if crop is None:
                    bad.append((index, reason))
                    continue
                crop = crop.to(self.device)
            keep.append(index)
            crops.append(crop)
        if not crops:
            return torch.empty(0, dtype=torch.int64), None, bad
        return torch.tensor(keep, dtype=torch.int64), torch.stack(crops), bad

    def crop(self, img: torch.Tensor) -> torch.Tensor:
        """The CPU path's resize and crop, on the device (crops.plain takes tensors as well)."""
        return crops.plain(img, self.preprocess, self.interpolation)


def decode_many(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded (3, H, W) uint8 images on ``device``; None where the decoder fails on that file."""
    if not jpegs:
        return []
    try:
        return list(_decode_jpeg(jpegs, device))
    except (RuntimeError, ValueError):  # one bad file fails the whole batched call: find it
        out = []
        for data in jpegs:
            try:
                out.append(_decode_jpeg(data, device))
            except (RuntimeError, ValueError):
                out.append(None)
        return out


def _decode_jpeg(data, device: torch.device):
    with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device)


def check_available(device: torch.device) -> None:
    """Fail at once, in one line, where torchvision cannot decode JPEGs on ``device``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    probe = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    try:
        out = _decode_jpeg([probe], device)
    except (ImportError, AttributeError, RuntimeError, NotImplementedError, OSError) as err:
        text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise FeatcacheError(
            f"--decode gpu: torchvision {torchvision.__version__} cannot decode JPEGs on {device} "
            f"({type(err).__name__}: {text}); use --decode cpu"
        ) from err
    if len(out) != 1 or tuple(out[0].shape) != (3, 16, 16):
        raise FeatcacheError(f"--decode gpu: torchvision {torchvision.__version__} decoded a test JPEG on {device} "
                             f"to the wrong shape; use --decode cpu")
