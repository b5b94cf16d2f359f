"""Shared helpers for the bench scripts: data sets, machine description, timing and tables.

Run the scripts from the repository root (``python bench/<name>.py``); this module is imported
as ``_common`` because the script's own folder is first on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
# The shared photo set beside the repository; BENCH_HYMENOPTERA points elsewhere (e.g. from a git worktree).
HYMENOPTERA = Path(os.environ.get("BENCH_HYMENOPTERA") or REPO.parent / "shared" / "data" / "hymenoptera").resolve()

# What the `featcache` command sets before torch loads (cli.py; importing featcache sets nothing), so the
# benches and the processes they start measure featcache as the command runs it. This module is
# imported before torch by every bench.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if str(REPO) not in sys.path:  # featcache is installed editable, but be robust to a bare checkout
    sys.path.insert(0, str(REPO))


def out_dir() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@contextmanager
def scratch(prefix: str):
    """A fresh directory under bench/out/ removed afterwards (a fresh featcache cache_dir, say)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        sys.exit(f"missing {HYMENOPTERA}: the benches expect ../shared/data/hymenoptera next to the repository")
    return HYMENOPTERA


def synthetic(n: int, size: tuple[int, int] = (500, 375), seed: int = 0, classes: int = 2) -> Path:
    """``n`` JPEGs of about ``size`` with random smooth content, in ImageFolder layout.

    Generated once into bench/out/data/ (gitignored) and reused; a marker file says it is complete.
    Content: see ``photo_like``. One random stream for the whole set (the figures in RESULTS.md were
    measured on exactly these images); ``synthetic_parallel`` makes a set of the same kind on many cores.
    """
    import numpy as np

    root = out_dir() / "data" / f"synthetic-{n}-{size[0]}x{size[1]}-s{seed}"
    marker = root / ".complete"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo_like(rng, size).save(root / f"class{i % classes}" / f"img{i:05d}.jpg", quality=90)
    marker.write_text(f"{n} images generated in {time.perf_counter() - t0:.1f}s\n")
    return root


def photo_like(rng, size: tuple[int, int]):
    """One RGB image of about ``size`` (+-10%, 20% portrait) that JPEG-compresses and decodes like a photo.

    A bicubic-upsampled random 6x5 colour field plus a few soft blobs and mild noise, so JPEG sizes
    (~25-40 KB at 500x375, quality 90) and decode cost resemble photos rather than flat colour.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    w = int(size[0] * rng.uniform(0.9, 1.1))
    h = int(size[1] * rng.uniform(0.9, 1.1))
    if rng.random() < 0.2:  # some portrait images
        w, h = h, w
    # the smooth part at 1/8 scale (cheap), upsampled by Pillow, then mild full-resolution noise
    sh, sw = max(h // 8, 2), max(w // 8, 2)
    coarse = Image.fromarray(rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8), "RGB").resize((sw, sh), Image.BICUBIC)
    arr = np.asarray(coarse).astype(np.float32)
    yy, xx = np.mgrid[0:sh, 0:sw]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, sh), rng.uniform(0, sw), rng.uniform(2.5, 15)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        arr += blob[..., None] * rng.integers(-120, 120, size=3)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.SMOOTH)


def synthetic_parallel(root: Path, n: int, size: tuple[int, int], seed: int = 0, classes: int = 2,
                       processes: int | None = None) -> Path:
    """Like ``synthetic`` but into ``root``, image i from its own random stream, on ``processes`` cores.

    Reused when ``root`` holds a complete set with the same recipe (a marker file says so).
    """
    import multiprocessing

    root = Path(root)
    marker = root / ".complete"
    recipe = f"{n} x {size[0]}x{size[1]} seed {seed} classes {classes}"
    if marker.exists() and marker.read_text().startswith(recipe):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(root / f"class{i % classes}" / f"img{i:05d}.jpg", size, seed, i) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(processes or os.cpu_count() or 1) as pool:
        pool.map(_one_photo, jobs, chunksize=max(1, n // (8 * (processes or os.cpu_count() or 1))))
    marker.write_text(f"{recipe}: generated in {time.perf_counter() - t0:.1f}s\n")
    return root


def _one_photo(job) -> None:
    import numpy as np

    path, size, seed, i = job
    photo_like(np.random.default_rng([seed, i]), size).save(path, quality=90)


def subset(root: Path, n: int) -> Path:
    """``n`` evenly spaced images of ``root`` as a folder of symlinks with the same layout.

    A separate folder gives a separate manifest (and feature-set id); the images are not copied.
    """
    src = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if n >= len(src):
        return Path(root)
    dst = out_dir() / "data" / f"{Path(root).name}-sub{n}"
    marker = dst / ".complete"
    if marker.exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    for k in range(n):
        p = src[k * len(src) // n]
        target = dst / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(p.resolve())
    marker.write_text("ok\n")
    return dst


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import PIL
    import torch
    import torchvision

    from featcache.core.machine import usable_cores

    cores = usable_cores()

    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "?"
    return (
        f"{date.today().isoformat()} | {cpu}, {cores} cores | Python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
        f"numpy {numpy.__version__} | load average at start {load}"
    )


class Others:
    """How many cores *other* processes used during a measurement (a noise flag for each number).

    Busy time of the whole machine from /proc/stat minus this process's and its reaped children's
    CPU time (DataLoader workers are reaped when the loader ends). Use as a context manager;
    ``.cores`` is the average number of cores taken by others, e.g. 0.9 = one core was busy elsewhere.
    """

    def __enter__(self):
        self._t, self._busy, self._own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc):
        wall = max(time.perf_counter() - self._t, 1e-9)
        others = (_busy_seconds() - self._busy) - (_own_seconds() - self._own)
        self.cores = max(0.0, others / wall) if others == others else float("nan")
        return False


def wait_quiet(threshold: float = 0.15, max_wait: float = 20.0, window: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores; returns the wait."""
    t0 = time.perf_counter()
    if max_wait <= 0:
        return 0.0
    while time.perf_counter() - t0 < max_wait:
        with Others() as o:
            time.sleep(window)
        if o.cores < threshold:
            break
    return time.perf_counter() - t0


def measured(fn, *args, retries: int = 2, threshold: float = 0.25, max_wait: float = 20.0, **kw):
    """Run ``fn`` after waiting for a quiet machine; rerun (up to ``retries``) if others were busy.

    Returns (result, others_cores) of the cleanest attempt: the machine is shared with other
    sessions' test suites, and torch with all cores' threads slows down many-fold when one core is
    taken, so a number measured while others were busy is not a measurement of our code.
    """
    best = None
    for _ in range(retries + 1):
        wait_quiet(max_wait=max_wait)
        with Others() as o:
            result = fn(*args, **kw)
        if best is None or o.cores < best[1]:
            best = (result, o.cores)
        if o.cores < threshold:
            break
    return best


def _busy_seconds() -> float:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A Markdown table (pasteable into bench/RESULTS.md)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_report(script: str, report: list[str], quick: bool, started: float) -> None:
    """Close a script's report with its running time and save it as bench/out/<script>[-quick].md."""
    report.append(f"\ntotal {time.perf_counter() - started:.0f} s")
    print(report[-1])
    out = out_dir() / f"{script}{'-quick' if quick else ''}.md"
    out.write_text("\n".join(report) + "\n")
    print(f"report written to {out.relative_to(REPO)}")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
