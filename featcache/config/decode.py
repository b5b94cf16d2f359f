"""How files become pixels: a record that is part of the feature-set id."""

from __future__ import annotations

from dataclasses import dataclass

from featcache.config.choices import DECODERS

# Bump when decoding changes the pixels it produces: it is part of the feature-set id.
DECODE_VERSION = 1


@dataclass(frozen=True)
class Decode:
    """How files become pixels.

    ``decoder="cpu"``: Pillow in the DataLoader workers, then the preprocessing's resize and crop;
    ``draft`` lets libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale. ``decoder="gpu"``: the workers
    only read the bytes and the main process decodes JPEGs as a batch with ``torchvision.io.decode_jpeg``
    on the extraction device, then resizes and crops the tensors there with the same crop code
    (featcache/extraction/jpeg.py, crops.py); other files take the CPU path at full size. It has no draft mode.
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
