"""Which pooling of a feature map finds copies best? Average vs max, on a real photo set.

From ``--data`` (an ImageFolder of photos), ``--sample`` photos are copied with the edits people make
(JPEG re-encoding at quality 50-95, resizing to 3/4, 1/2 and 1/4, 90% and 80% centre crops, a mirror
image, +20% brightness) into a scratch folder; both folders are extracted with the default backbone
(cache hits after the first run). For each pooling the threshold is set where the data set itself
has ``K`` pairs above it (``--pairs``, default 25 and 50; choose K above the set's own number of true
copies, e.g. 100 and 200 for oxford17flowers with its ~66 near-identical pairs), and the table says what
fraction of each kind of edited copy stays above it.

    python bench/audit_pooling.py --data /work/datasets/trashnet
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from _common import out_dir
from PIL import Image, ImageEnhance

EDITS = {
    "jpeg q95": lambda im: ("jpg", im, {"quality": 95}),
    "jpeg q85": lambda im: ("jpg", im, {"quality": 85}),
    "jpeg q75": lambda im: ("jpg", im, {"quality": 75}),
    "jpeg q50": lambda im: ("jpg", im, {"quality": 50}),
    "resize 3/4": lambda im: ("png", im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS), {}),
    "resize 1/2": lambda im: ("jpg", im.resize((im.width // 2, im.height // 2), Image.LANCZOS), {"quality": 90}),
    "resize 1/4": lambda im: ("jpg", im.resize((im.width // 4, im.height // 4), Image.LANCZOS), {"quality": 90}),
    "crop 90%": lambda im: ("jpg", im.crop((im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)), {"quality": 90}),
    "crop 80%": lambda im: ("jpg", im.crop((im.width // 10, im.height // 10, im.width - im.width // 10, im.height - im.height // 10)), {"quality": 90}),
    "mirror": lambda im: ("jpg", im.transpose(Image.FLIP_LEFT_RIGHT), {"quality": 90}),
    "brightness +20%": lambda im: ("jpg", ImageEnhance.Brightness(im).enhance(1.2), {"quality": 90}),
}


def pooled(fs, how: str) -> np.ndarray:
    maps = fs.load(np.float32)
    X = maps.reshape(len(maps), maps.shape[1], -1)
    X = X.max(axis=2) if how == "max" else X.mean(axis=2)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def main() -> None:
    import featcache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=out_dir() / "featcache-cache")
    parser.add_argument("--pairs", type=int, nargs="+", default=[25, 50],
                        help="K: thresholds where the set has K pairs above (more than its own true copies)")
    args = parser.parse_args()

    photos = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    random.Random(0).shuffle(photos)
    edited = out_dir() / "data" / f"edited-{args.data.name}-{args.sample}" / "all"
    edited.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(photos[:args.sample]):
        im = Image.open(photo).convert("RGB")
        (edited / f"{k:03d}_original{photo.suffix.lower()}").write_bytes(photo.read_bytes())
        for name, edit in EDITS.items():
            ext, out, kw = edit(im)
            target = edited / f"{k:03d}_{name.replace(' ', '-').replace('/', 'of').replace('%', 'pc').replace('+', 'plus')}.{ext}"
            if not target.exists():
                out.save(target, **kw)
    base = featcache.extract(args.data, cache_dir=args.cache_dir)
    copies = featcache.extract(edited.parent, cache_dir=args.cache_dir)
    lines = [f"{args.data} ({base.n_rows} photos), {args.sample} photos edited; fraction of copies at or above the threshold",
             "", "| pooling | K pairs of the set above t | t | " + " | ".join(EDITS) + " |", "|" + "---|" * (3 + len(EDITS))]
    with base.open() as fs_base, copies.open() as fs_copies:
        names = [Path(p).stem for p in fs_copies.paths]
        for how in ("avg", "max"):
            A, B = pooled(fs_base, how), pooled(fs_copies, how)
            S = A @ A.T
            upper = np.sort(S[np.triu_indices(len(S), 1)])[::-1]
            index = {n: i for i, n in enumerate(names)}
            for K in args.pairs:
                t = upper[K]
                kept = []
                for name in EDITS:
                    tag = name.replace(" ", "-").replace("/", "of").replace("%", "pc").replace("+", "plus")
                    sims = [B[index[f"{k:03d}_{tag}"]] @ B[index[f"{k:03d}_original"]] for k in range(args.sample)]
                    kept.append(f"{np.mean(np.array(sims) >= t):.2f}")
                lines.append(f"| {how} | {K} | {t:.3f} | " + " | ".join(kept) + " |")
    print("\n".join(lines))
    (out_dir() / f"audit_pooling-{args.data.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
