"""Regenerate ``data/``: scikit-learn's bundled handwritten digits as PNG files, one folder per class.

The sample set ships inside a dependency (scikit-learn's ``load_digits``: 1,797 8x8 scans from the
UCI ML hand-written digits set), so featcache can show its whole loop offline on real data. We take
the first 50 images of each digit, draw them as dark ink on white at 64x64, and write
``data/<digit>/<digit>_<n>.png``. Run from the repository root: ``python data/make_digits.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

PER_CLASS = 50
SIZE = 64
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main(out: Path = Path(__file__).resolve().parent) -> None:
    digits = load_digits()
    counts = {k: 0 for k in range(10)}
    for image, target in zip(digits.images, digits.target):
        if counts[target] >= PER_CLASS:
            continue
        ink = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
        picture = Image.fromarray(ink, "L").resize((SIZE, SIZE), Image.BICUBIC)
        folder = out / f"{target}_{NAMES[target]}"
        folder.mkdir(exist_ok=True)
        picture.save(folder / f"{NAMES[target]}_{counts[target]:03d}.png", optimize=True)
        counts[target] += 1
    print(f"wrote {sum(counts.values())} images in {len(counts)} class folders under {out}")


if __name__ == "__main__":
    main()
