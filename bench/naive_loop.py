"""The seed-style extraction loop that featcache replaces: the baseline for the speed and memory benches.

What the seed tutorials did: open each image with PIL in the main process, run torchvision's
``Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize`` on it, stack 10 at a time, forward,
and grow one big array with ``np.concatenate`` after every batch. No worker processes, no JPEG
draft mode, no channels_last, no EXIF handling, features kept in memory (never written).

For a fair comparison the model is exactly featcache's: same backbone, weights and cut (built with
``featcache.backbones.resolve`` + ``build``), and the same resize interpolation, mean and std, so
its features match ``featcache.extract(..., draft=False)`` up to float rounding (and EXIF).

Usage as a module::

    from naive_loop import naive_extract
    feats, seconds = naive_extract("../shared/data/hymenoptera", "efficientnet_lite0")

or ``python bench/naive_loop.py DATA [--model M] [--weights W] [--limit N]`` to time it alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BATCH = 10


def image_files(data: str | Path) -> list[str]:
    """Same files in the same order as featcache (its manifest walk; stat only)."""
    from featcache.extraction.scan import scan

    m = scan(data)
    return [str(m.root / p) for p in m.paths]


def naive_extract(
    data: str | Path,
    model: str = "efficientnet_lite0",
    weights: str = "DEFAULT",
    layer: str | None = None,
    pool: str = "none",
    batch_size: int = BATCH,
    limit: int | None = None,
    files: list[str] | None = None,
    device: str = "cpu",
    image_size: int | None = None,
) -> tuple[np.ndarray, float]:
    """Features of every image under ``data`` (float32, in manifest order) and the seconds it took.

    The time covers building the model and the loop (what featcache's ``images_per_second`` covers).
    ``device="cuda"``: the seed's GPU variant: ``model.cuda()``, each batch ``.cuda()``, fp32,
    ``.cpu().numpy()`` per batch.
    """
    from torchvision import transforms

    from featcache import backbones

    files = files if files is not None else image_files(data)
    if limit is not None:
        files = files[:limit]
    spec = backbones.resolve(model, weights=weights, layer=layer, pool=pool, image_size=image_size)
    p = spec.backbone.preprocess
    t0 = time.perf_counter()
    net = backbones.build(spec).to(device)
    tf = transforms.Compose([
        transforms.Resize(p.resize_size, interpolation=transforms.InterpolationMode(p.interpolation)),
        transforms.CenterCrop(p.crop_size),
        transforms.ToTensor(),
        transforms.Normalize(p.mean, p.std),
    ])
    features = np.empty((0,) + tuple(spec.feature_shape), dtype=np.float32)
    batch: list[torch.Tensor] = []
    with torch.no_grad():
        for i, path in enumerate(files):
            img = Image.open(path).convert("RGB")
            batch.append(tf(img))
            if len(batch) == batch_size or i == len(files) - 1:
                out = net(torch.stack(batch).to(device)).cpu().numpy()
                features = np.concatenate([features, out])  # the seed's growing array
                batch = []
    return features, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    feats, seconds = naive_extract(args.data, args.model, args.weights, limit=args.limit)
    print(f"{len(feats)} images x {feats.shape[1:]} in {seconds:.1f}s: {len(feats) / seconds:.1f} img/s "
          f"(torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
