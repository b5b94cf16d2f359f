"""Opening any image a user's folder holds as RGB pixels, or a reason why not (Pillow only, no torch).

Every mode Pillow opens is turned into RGB the same way on every path (extraction, prediction,
thumbnails): EXIF orientation applied first, alpha composited over white, 16-bit samples scaled
(not clipped) to 8 bits. Problems come back as ``BadImage`` reasons, never as Pillow's exceptions.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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
    match = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(match[1]):,} pixels" if match else "too many pixels"
