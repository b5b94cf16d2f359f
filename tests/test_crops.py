"""Issue 21: one crop implementation (featcache/extraction/crops.py) for CPU decoding, GPU decoding and
views. ``--decode gpu`` used to resize the shorter side and cut a square centre crop whatever the
preprocessing said, so a timm model with a ``squash`` or ``border`` crop, or a non-square input, got
other pixels on the device than on the CPU: a silently different feature set."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.backbones.spec import Preprocess
from featcache.config.decode import Decode
from featcache.extraction import crops, jpeg
from featcache.extraction.decode import Transform

PREPROCESS = {
    "center, square": Preprocess(72, 64),
    "center, non-square": Preprocess((72, 96), (64, 80)),
    "squash, square": Preprocess(72, 64, crop_mode="squash"),
    "squash, non-square": Preprocess((80, 60), (72, 56), crop_mode="squash"),
    "border, square": Preprocess(64, 64, crop_mode="border", mean=(0.5, 0.4, 0.3)),
    "border, non-square": Preprocess((64, 96), (64, 96), crop_mode="border"),
}


def _photo(width=150, height=100) -> bytes:
    """A smooth colour field (rounding differences between decoders stay small) as a JPEG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.mark.parametrize("name", list(PREPROCESS))
def test_the_device_decoder_cuts_what_the_cpu_path_cuts(name):
    p, data = PREPROCESS[name], _photo()
    cpu = Transform(p, Decode(draft=False))(io.BytesIO(data))
    index, batch, bad = jpeg.collate([(0, jpeg.Jpeg(data), None)])
    _, device, bad = jpeg.DeviceDecoder(p, torch.device("cpu"))(index, batch)
    assert bad == [] and tuple(device.shape[1:]) == tuple(cpu.shape) == (3, *p.crop_hw)
    # Pillow's fixed-point resize and libjpeg's decoders vs float tensors: rounding, not other pixels
    assert (device[0].float() - cpu.float()).abs().mean() < 2.5


@pytest.mark.parametrize("name", list(PREPROCESS))
def test_one_crop_function_takes_pil_images_and_tensors(name):
    p = PREPROCESS[name]
    img = Image.open(io.BytesIO(_photo())).convert("RGB")
    interpolation = Transform(p).interpolation
    from_pil = crops.plain(img, p, interpolation)
    from_tensor = crops.plain(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous(), p, interpolation)
    assert from_pil.shape == from_tensor.shape == (3, *p.crop_hw) and from_pil.dtype == from_tensor.dtype == torch.uint8
    assert (from_pil.float() - from_tensor.float()).abs().mean() < 2.5
